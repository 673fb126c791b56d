"""New rows get codes without retraining: ``saedb encode`` on both backends, and on Postgres the
``saedb_encode_new`` procedure and the opt-in insert trigger. A model is trained on papers up
to 2015 (the last 300 before 2016 in hh_ml's date order); later papers arrive afterwards."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from saedb.backends import Backend
from saedb.cli import app
from saedb.encode import encode_new_documents, pending_documents
from saedb.loaders import load_corpus
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.conftest import ML

FIRST_2016 = 22155  # hh_ml is in date order: lines before this one are papers up to 2015


def lines(target: Path, start: int, stop: int) -> Path:
    with gzip.open(ML, "rt") as source, gzip.open(target, "wt") as out:
        out.writelines(itertools.islice(source, start, stop))
    return target


def codes_of(backend: Backend, model_id: int, doc_ids: list[int]) -> dict[int, list[tuple[int, float]]]:
    marks = ", ".join("?" * len(doc_ids))
    found: dict[int, list[tuple[int, float]]] = {d: [] for d in doc_ids}
    for doc_id, feature, activation in backend.query(
        f"SELECT doc_id, feature_id, activation FROM sae_codes WHERE model_id = ? AND doc_id IN ({marks}) "
        "ORDER BY doc_id, activation DESC, feature_id", [model_id, *doc_ids]):
        found[doc_id].append((feature, activation))
    return found


def assert_reference_codes(backend: Backend, model_id: int, doc_ids: list[int]) -> None:
    sae = backend.load_sae(model_id)
    marks = ", ".join("?" * len(doc_ids))
    x = backend.fetch_vectors(f"SELECT embedding FROM embeddings WHERE doc_id IN ({marks}) ORDER BY doc_id", doc_ids)
    stored = codes_of(backend, model_id, sorted(doc_ids))
    for doc_id, expected in zip(sorted(doc_ids), sae.encode(x).rows()):
        assert [f for f, _ in stored[doc_id]] == [f for f, _ in expected]
        np.testing.assert_allclose([a for _, a in stored[doc_id]], [a for _, a in expected], atol=1e-5)


@pytest.fixture
def trained_to_2015(backend: Backend, tmp_path: Path, embedder) -> tuple[Backend, int]:
    load_corpus(backend, lines(tmp_path / "to2015.jsonl.gz", FIRST_2016 - 300, FIRST_2016), embedder, progress=False)
    model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=60, batch_size=64, lr=1e-3), "to2015")
    return backend, model_id


def test_only_new_rows_are_encoded_resumably(trained_to_2015: tuple[Backend, int], tmp_path: Path, embedder) -> None:
    backend, model_id = trained_to_2015
    before = backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
    last_trained = backend.query("SELECT max(doc_id) FROM papers")[0][0]
    with backend.encoding_deferred():  # Postgres's insert trigger would encode them as they arrive
        load_corpus(backend, lines(tmp_path / "2016.jsonl.gz", FIRST_2016, FIRST_2016 + 200), embedder, progress=False, encode=False)
    assert pending_documents(backend, model_id) == 200
    new = [r[0] for r in backend.query("SELECT doc_id FROM papers WHERE doc_id > ?", (last_trained,))]
    assert len(new) == 200
    if backend.dialect == "duckdb":  # codes behind the table are an error to read, never a partial answer
        with pytest.raises(duckdb.InvalidInputException, match="run `saedb encode`"):
            codes_of(backend, model_id, new)
    else:
        assert codes_of(backend, model_id, new) == {d: [] for d in new}
    seen: list[int] = []
    report = encode_new_documents(backend, model_id, batch_size=64, progress=seen.append)
    assert report.encoded + report.without_features == 200 and seen == [64, 64, 64, 8]
    assert_reference_codes(backend, model_id, new)
    old = backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ? AND doc_id <= ?", (model_id, last_trained))[0][0]
    assert old == before  # codes of the training documents untouched
    records_all = backend.coded_table != backend.codes_table  # DuckDB records a document without features as coded
    assert encode_new_documents(backend, model_id).encoded == 0
    assert pending_documents(backend, model_id) == (0 if records_all else report.without_features)
    n_documents = backend.query("SELECT n_documents FROM sae_models WHERE model_id = ?", (model_id,))[0][0]
    assert n_documents == 300 + (200 if records_all else report.encoded)


def test_cli_encode(trained_to_2015: tuple[Backend, int], tmp_path: Path, embedder, db_url: str) -> None:
    backend, model_id = trained_to_2015
    with backend.encoding_deferred():
        load_corpus(backend, lines(tmp_path / "2016.jsonl.gz", FIRST_2016, FIRST_2016 + 30), embedder, progress=False, encode=False)
    result = CliRunner().invoke(app, ["encode", "to2015", "--db", db_url])
    assert result.exit_code == 0, result.output
    encoded = int(result.output.split("encoded ")[1].split()[0])
    assert f"model {model_id}: encoded" in result.output and encoded + int(result.output.split("; ")[-1].split()[0] if "no active" in result.output else 0) == 30
    again = CliRunner().invoke(app, ["encode", "--db", db_url])  # every published model
    assert again.exit_code == 0 and f"model {model_id}: encoded 0 documents" in again.output, again.output


def test_postgres_procedure_and_insert_trigger(pg_dsn: str, tmp_path: Path, embedder) -> None:
    from saedb.backends import connect

    with connect(pg_dsn) as backend:
        load_corpus(backend, lines(tmp_path / "to2015.jsonl.gz", FIRST_2016 - 300, FIRST_2016), embedder, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=60, batch_size=64, lr=1e-3), "to2015")
        last_trained = backend.query("SELECT max(doc_id) FROM papers")[0][0]
        with backend.encoding_deferred():
            load_corpus(backend, lines(tmp_path / "a.jsonl.gz", FIRST_2016, FIRST_2016 + 40), embedder, progress=False, encode=False)
        assert pending_documents(backend, model_id) == 40
        backend.execute(f"CALL saedb_encode_new({model_id})")
        new = [r[0] for r in backend.query("SELECT doc_id FROM papers WHERE doc_id > ?", (last_trained,))]
        assert pending_documents(backend, model_id) == 0
        assert_reference_codes(backend, model_id, new)
        load_corpus(backend, lines(tmp_path / "b.jsonl.gz", FIRST_2016 + 40, FIRST_2016 + 60), embedder, progress=False, encode=False)
        arrived = [r[0] for r in backend.query("SELECT doc_id FROM papers WHERE doc_id > ?", (max(new),))]
        assert len(arrived) == 20
        assert_reference_codes(backend, model_id, arrived)
        assert pending_documents(backend, model_id) == 0
        coded = backend.query("SELECT count(DISTINCT doc_id) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
        assert backend.model_row(model_id)["n_documents"] == coded  # the trigger counted them
