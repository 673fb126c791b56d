"""The untrained control (issue 34): an SAE of the same shape at the trainer's initialisation,
labelled and scored like the trained one, with each label's round trip stored in SQL."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from saedb.backends import Backend
from saedb.cli import app
from saedb.embedders import WordLlamaEmbedder
from saedb.interp import OfflineLabeller, corpus_stats, run_autointerp
from saedb.interp.roundtrip import RoundTrip
from saedb.trainer.train import publish_untrained


def test_the_control_is_the_trainers_start_published_once(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    control = publish_untrained(backend, model_id)
    assert publish_untrained(backend, model_id) == control  # once per model
    row = backend.query("SELECT name, k, n_latents, steps, control_of FROM sae_models WHERE model_id = ?", (control,))[0]
    assert row == ("analysis-untrained", 8, 128, 0, model_id)
    assert backend.model_row(control)["metrics"]["config"]["seed"] == backend.model_row(model_id)["metrics"]["config"]["seed"]
    held = backend.query("SELECT doc_id FROM model_holdout WHERE model_id = ? ORDER BY doc_id", (model_id,))
    assert held and backend.query("SELECT doc_id FROM model_holdout WHERE model_id = ? ORDER BY doc_id", (control,)) == held
    # The same initialisation the trainer starts from: one training step moves it only a little.
    from saedb.trainer import TrainConfig
    from saedb.trainer.train import train_from_db

    config = backend.model_row(model_id)["metrics"]["config"]
    one_step, _ = train_from_db(backend, TrainConfig(**{**config, "steps": 1}), "one-step")
    start, stepped, trained_dec = backend.decoder(control), backend.decoder(one_step), backend.decoder(model_id)
    assert np.abs(start - stepped).max() < 0.05 < np.abs(start - trained_dec).max()
    with pytest.raises(Exception, match="itself an untrained control"):
        publish_untrained(backend, control)


def test_round_trip_is_stored_and_equals_numpy(trained: tuple[Backend, int], embedder: WordLlamaEmbedder) -> None:
    backend, model_id = trained
    roundtrip = RoundTrip.for_model(backend, model_id)
    assert roundtrip is not None
    run_autointerp(backend, model_id, OfflineLabeller(corpus_stats(backend)), limit=20, concurrency=2, roundtrip=roundtrip)
    rows = backend.query("SELECT feature_id, label, roundtrip_rank, decoder_cosine FROM feature_labels WHERE model_id = ?",
                         (model_id,))
    assert len(rows) >= 10
    sae = backend.load_sae(model_id)
    vectors = embedder.embed([label for _, label, _, _ in rows])
    codes = sae.encode(vectors)
    unit = sae.w_dec / np.linalg.norm(sae.w_dec, axis=1, keepdims=True)
    for (feature, _, rank, cosine), vector, indices, values in zip(rows, vectors, codes.indices, codes.values):
        active = [int(i) for i, v in zip(indices, values) if v > 0]
        assert rank == (active.index(feature) + 1 if feature in active else None)
        assert cosine == pytest.approx(float(vector @ unit[feature]), abs=1e-5)
    # Labels switch their own features on far more often than they switch on another feature.
    own = np.mean([rank is not None for _, _, rank, _ in rows])
    other = np.mean([rows[(i + 1) % len(rows)][0] in [int(j) for j, v in zip(codes.indices[i], codes.values[i]) if v > 0]
                     for i in range(len(rows))])
    assert own > other


def test_interp_prints_the_trained_model_beside_its_untrained_control(trained: tuple[Backend, int], db_url: str) -> None:
    backend, model_id = trained
    backend.close()
    result = CliRunner().invoke(app, ["interp", str(model_id), "--db", db_url, "--limit", "30", "--no-control"])
    assert result.exit_code == 0, result.output
    from saedb.backends import connect

    with connect(db_url) as reopened:
        control = reopened.query("SELECT model_id FROM sae_models WHERE control_of = ?", (model_id,))[0][0]
        for model in (model_id, control):
            labelled = reopened.query("SELECT count(*), count(decoder_cosine), bool_and(held_out) FROM feature_labels "
                                      "WHERE model_id = ? AND labeller = 'offline-roundtrip'", (model,))[0]
            assert labelled[0] > 0 and labelled[1] == labelled[0] and labelled[2]
        clean = reopened.query("SELECT count(*) FROM feature_labels WHERE model_id = ? AND clean", (model_id,))[0][0]
        hits = reopened.query("SELECT avg(CASE WHEN roundtrip_rank <= 5 THEN 1.0 ELSE 0.0 END) FROM feature_labels "
                              "WHERE model_id = ?", (model_id,))[0][0]
    lines = result.output.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("labels by offline-roundtrip"))):]
    assert table[1].split() == ["trained", "untrained", "margin"]
    assert table[2].split()[0] == "labels" and table[3].startswith("Pearson, held out")
    assert next(line for line in table if line.startswith("clean features")).split()[2] == f"{clean:,}"
    assert float(next(line for line in table if line.startswith("round trip hit@5")).split()[3]) == pytest.approx(float(hits), abs=1e-3)
    assert any(line.startswith("the trained model") for line in table)


def test_a_control_model_is_never_offered_for_steering(trained: tuple[Backend, int]) -> None:
    from saedb.app.api import models

    backend, model_id = trained
    control = publish_untrained(backend, model_id)
    run_autointerp(backend, control, OfflineLabeller(corpus_stats(backend)), limit=10, concurrency=2)
    label = backend.query("SELECT label FROM feature_labels WHERE model_id = ? LIMIT 1", (control,))[0][0]
    assert control not in [m["model_id"] for m in models(backend)]
    with pytest.raises(Exception, match="untrained control"):
        backend.query("SELECT sae_feature_by_label(?, ?)", (label, control))
