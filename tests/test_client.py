"""The notebook API on real DuckDB and Postgres: saedb.connect, Arrow results with column names."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import pytest

import saedb
from saedb.errors import InvalidInputError, UnknownModelError


def test_version_and_typed_package() -> None:
    assert saedb.__version__ == version("saedb")
    assert (Path(saedb.__file__).parent / "py.typed").is_file()


def test_sql_and_search_return_arrow_tables(trained, db_url: str) -> None:
    _, model_id = trained
    with saedb.connect(db_url) as db:
        papers = db.sql("SELECT doc_id, title, year FROM papers WHERE year >= ? ORDER BY doc_id LIMIT 5", [2000])
        assert isinstance(papers, pa.Table) and papers.column_names == ["doc_id", "title", "year"] and papers.num_rows == 5
        vectors = db.sql("SELECT doc_id, embedding FROM embeddings ORDER BY doc_id LIMIT 2")
        stored = db.backend.fetch_vectors("SELECT embedding FROM embeddings ORDER BY doc_id LIMIT 2")
        np.testing.assert_array_equal(np.array(vectors.column("embedding").to_pylist(), dtype=np.float32), stored)
        codes = db.sql("SELECT f.feature_id, f.activation FROM embeddings e, unnest(sae_encode(e.embedding, ?)) AS f "
                       "WHERE e.doc_id = ?", [model_id, int(papers.column("doc_id")[0].as_py())])
        assert codes.column_names == ["feature_id", "activation"] and codes.num_rows == 8
        plain = db.search("gamma-ray bursts", limit=5)
        assert plain.column_names == ["doc_id", "arxiv_id", "title", "year", "distance"] and plain.num_rows == 5
        steered = db.search("gamma-ray bursts", model="analysis", feature=int(codes.column("feature_id")[0].as_py()), strength=-0.8, limit=5)
        assert steered.column("doc_id").to_pylist() != plain.column("doc_id").to_pylist()
        corpus = db.sql("SELECT corpus FROM papers LIMIT 1").column("corpus")[0].as_py()
        assert db.search("gamma-ray bursts", limit=5, corpus=corpus).column("doc_id").to_pylist() == plain.column("doc_id").to_pylist()
        with pytest.raises(InvalidInputError, match="no corpus 'another' here"):  # was 0 rows: a misspelt corpus found nothing, silently
            db.search("gamma-ray bursts", limit=5, corpus="another")
        assert db.search("gamma-ray bursts", limit=5, corpus=corpus, year_from=3000).num_rows == 0
        recent = db.search("gamma-ray bursts", limit=5, year_from=2000, exact=True)
        assert recent.num_rows == 5 and min(recent.column("year").to_pylist()) >= 2000
        assert db.features("analysis").num_rows > 0 and db.model_id("analysis") == model_id
        assert db.sql("CREATE TABLE my_notes (doc_id bigint, note text)").num_rows == 0
        with db.snapshot():
            assert db.search("gamma-ray bursts", limit=5) == plain
            with pytest.raises((duckdb.Error, psycopg.Error), match="read-only|read only"):
                db.sql("DELETE FROM my_notes")
        with pytest.raises(UnknownModelError, match="no published model named 'nope'"):
            db.search("x", model="nope", feature=1)
