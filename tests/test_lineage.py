"""Feature lineage across model versions on both backends, against a known answer: model B is
built from model A (a shuffled, slightly perturbed copy of its decoder rows, three more rows
that split one of A's features, and rows pointing nowhere near any of A's)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from saedb.backends import Backend
from saedb.cli import app
from saedb.errors import InvalidInputError, UnknownModelError
from saedb.lineage import best_matches, match_models
from saedb.models import publish_model
from saedb.sae import SAE

SPLIT = 5  # A's feature that three more rows of B split
ORPHANS = 13


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def two_models(loaded: Backend) -> tuple[Backend, int, int, np.ndarray]:
    rng = np.random.default_rng(3)
    a = SAE.random(d=256, n=64, k=8, seed=1)
    perm = rng.permutation(64)  # B's row i continues A's feature perm[i]
    copies = unit(a.w_dec[perm]) + 0.05 * unit(rng.standard_normal((64, 256))) / np.sqrt(2)
    splits = unit(a.w_dec[[SPLIT] * 3]) + 0.3 * unit(rng.standard_normal((3, 256)))
    w_dec = np.vstack([copies, splits, unit(rng.standard_normal((ORPHANS, 256)))]).astype(np.float32)
    b = SAE(w_enc=w_dec.copy(), b_lat=np.zeros(len(w_dec), np.float32), w_dec=w_dec, b_pre=a.b_pre, k=8)
    model_a, model_b = publish_model(loaded, a, "lineage"), publish_model(loaded, b, "lineage")
    loaded.execute("INSERT INTO feature_labels (model_id, feature_id, labeller, label, pearson, f1, density) "
                   "VALUES (?, 7, 'handmade', 'dust grains', 0.9, 0.9, 0.01)", (model_a,))
    return loaded, model_a, model_b, perm


def test_best_matches_are_the_exact_argmax_of_cosine() -> None:
    rng = np.random.default_rng(0)
    source, target = rng.standard_normal((3000, 32)), rng.standard_normal((700, 32))  # more rows than one chunk
    index, cosine = best_matches(source, target)
    full = unit(source) @ unit(target).T
    assert (index == full.argmax(axis=1)).all() and np.allclose(cosine, full.max(axis=1), atol=1e-12)


def test_matches_both_ways_with_splits_orphans_and_carried_labels(two_models) -> None:
    backend, model_a, model_b, perm = two_models
    forward, backward = match_models(backend, model_a, model_b)
    a_dec, b_dec = backend.decoder(model_a), backend.decoder(model_b)
    rows = {(m, f): (other, cosine) for m, f, other, cosine in backend.query(
        "SELECT model_id, feature_id, other_feature_id, cosine FROM feature_matches")}
    assert len(rows) == 64 + 80
    for i in range(64):  # each copy's best match is the feature it copies
        assert rows[(model_b, i)][0] == perm[i]
    cosines = unit(b_dec) @ unit(a_dec).T
    assert [rows[(model_b, i)][1] for i in range(80)] == pytest.approx(list(cosines.max(axis=1)), abs=1e-6)
    assert [rows[(model_a, i)][1] for i in range(64)] == pytest.approx(list(cosines.max(axis=0)), abs=1e-6)

    lineage = {(m, f): row for m, f, *row in backend.query(
        "SELECT model_id, feature_id, mutual, matched_by, orphan, carried_label FROM feature_lineage")}
    assert lineage[(model_a, SPLIT)][1] == 4 and sum(row[1] >= 2 for (m, _), row in lineage.items() if m == model_a) == 1
    assert sum(row[2] for (m, _), row in lineage.items() if m == model_b) == ORPHANS  # the rows pointing nowhere
    assert not any(row[2] for (m, _), row in lineage.items() if m == model_a)
    assert sum(row[0] for (m, _), row in lineage.items() if m == model_a) == 64  # every A feature and its copy
    copy_of_7 = int(np.flatnonzero(perm == 7)[0])
    assert lineage[(model_b, copy_of_7)][3] == "dust grains"
    assert [row[3] for key, row in lineage.items() if key != (model_b, copy_of_7)] == [None] * (64 + 80 - 1)

    assert (forward["model_id"], forward["n_features"], forward["split_features"], forward["largest_split"]) == (model_a, 64, 1, 4)
    assert (backward["n_features"], backward["orphans"], backward["mutual"], backward["carried_labels"]) == (80, ORPHANS, 64, 1)
    assert forward["mean_max_cosine"] == pytest.approx(cosines.max(axis=0).mean(), abs=1e-6)
    assert match_models(backend, model_b, model_a)[1] == forward  # a rerun either way replaces, never doubles
    assert backend.count("feature_matches") == 144


def test_cli_match_and_its_errors(two_models, db_url: str) -> None:
    backend, model_a, model_b, _ = two_models
    backend.close()
    runner = CliRunner()
    result = runner.invoke(app, ["match", str(model_a), str(model_b), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert f"model {model_a} -> {model_b}: 64 features" in result.output and "1 split (largest into 4)" in result.output
    assert f"model {model_a} feature {SPLIT} (no label) is the best match of 4 features" in result.output
    same = runner.invoke(app, ["match", str(model_a), str(model_a), "--db", db_url])
    assert same.exit_code == 2 and "match two different models" in same.output
    missing = runner.invoke(app, ["match", str(model_a), "99", "--db", db_url])
    assert missing.exit_code == 2 and "unknown model 99" in missing.output


def test_unknown_or_identical_models_are_refused_before_anything_is_written(two_models) -> None:
    backend, model_a, _, _ = two_models
    with pytest.raises(UnknownModelError):
        match_models(backend, model_a, 99)
    with pytest.raises(InvalidInputError):
        match_models(backend, model_a, model_a)
    assert backend.count("feature_matches") == 0
