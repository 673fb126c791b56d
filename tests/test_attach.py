"""A user's own table on both backends: my_docs(doc_key text primary key, emb vector(384),
venue text, year int) with real MiniLM vectors. Train, encode new rows, search and the BI
views work on it through a workspace schema, without copying it or changing it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from saedb.attach import Attachment, attach_table, raw_connection
from saedb.cli import app
from saedb.encode import encode_new_documents
from saedb.models import publish_model
from saedb.sae import SAE
from saedb.search import Steering, search
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.conftest import DATA

VENUES = ("NeurIPS", "ICML", "ICLR")


@pytest.fixture(scope="module")
def minilm_rows() -> tuple[list[str], np.ndarray]:
    table = pq.read_table(DATA / "hh_ml_minilm.parquet").slice(0, 360)
    return table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)


def make_my_docs(url: str, keys: list[str], vectors: np.ndarray) -> None:
    """The user's own table, made with the database's own tools (not saedb)."""
    with raw_connection(url) as (execute, dialect):
        vector_type = "vector(384)" if dialect == "postgres" else "FLOAT[384]"
        if dialect == "postgres":
            execute("CREATE EXTENSION IF NOT EXISTS vector")
        execute(f"CREATE TABLE my_docs (doc_key text PRIMARY KEY, emb {vector_type}, venue text, year int)")
        insert_rows(execute, dialect, keys, vectors, 0)


def insert_rows(execute, dialect: str, keys: list[str], vectors: np.ndarray, start: int) -> None:
    cast = "::vector" if dialect == "postgres" else "::FLOAT[384]"
    values = ", ".join(f"('{k}', '[{','.join(f'{v:.8g}' for v in vec)}]'{cast}, '{VENUES[(start + i) % 3]}', {2015 + (start + i) % 4})"
                       for i, (k, vec) in enumerate(zip(keys, vectors)))
    execute(f"INSERT INTO my_docs VALUES {values}")


def test_train_encode_search_and_views_over_my_table(db_url: str, minilm_rows, tmp_path: Path) -> None:
    keys, vectors = minilm_rows
    url = db_url if db_url.startswith("postgres") else str(tmp_path / "mine.duckdb")
    make_my_docs(url, keys[:300], vectors[:300])
    with attach_table(url, "my_docs_sae", Attachment("my_docs", "doc_key", "emb", year="year"), embedder="minilm") as backend:
        assert backend.count("doc_keys") == 300 and backend.count("embeddings") == 300
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=60, batch_size=64, lr=1e-3), "mine")
        coded = backend.query("SELECT count(DISTINCT doc_id) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
        assert coded == 300
        # codes join back to the user's rows and metadata through doc_keys
        by_venue = dict(backend.query(
            "SELECT d.venue, count(DISTINCT c.doc_id) FROM sae_codes c JOIN doc_keys k ON k.doc_id = c.doc_id "
            "JOIN my_docs d ON d.doc_key = k.doc_key WHERE c.model_id = ? GROUP BY d.venue", (model_id,)))
        assert by_venue == {"NeurIPS": 100, "ICML": 100, "ICLR": 100}
        trends = backend.query("SELECT year, sum(n_docs) FROM feature_trends WHERE model_id = ? GROUP BY year ORDER BY year", (model_id,))
        assert [y for y, _ in trends] == [2015, 2016, 2017, 2018]
        sae = backend.load_sae(model_id)
        hits = search(backend, vectors[7], 5, Steering("feature", 3, 0.5, model_id))
        assert all(hit.arxiv_id in keys[:300] for hit in hits)
        assert search(backend, vectors[7], 1)[0].arxiv_id == keys[7]  # its own row is nearest
        if backend.in_process_search:  # the workspace's HNSW graph has files of its own, named after the schema
            backend.build_approximate_index()
            assert Path(url + ".my_docs_sae.hnsw.json").exists() and not Path(url + ".hnsw.json").exists()
        # new rows of the user's table get codes without retraining: on Postgres from the
        # workspace's triggers on the table as they are inserted, on DuckDB from saedb encode
        with raw_connection(url) as (execute, dialect):
            insert_rows(execute, dialect, keys[300:360], vectors[300:360], 300)
        report = encode_new_documents(backend, model_id)
        assert report.encoded + report.without_features == (0 if dialect == "postgres" else 60)
        new = dict(backend.query("SELECT k.doc_key, k.doc_id FROM doc_keys k ORDER BY k.doc_id")[300:])
        assert set(new) == set(keys[300:360])
        assert search(backend, vectors[331], 1)[0].arxiv_id == keys[331]  # and follows the rows added to my table
        for i in (300, 331, 359):
            stored = backend.query("SELECT feature_id FROM sae_codes WHERE model_id = ? AND doc_id = ? ORDER BY activation DESC, feature_id",
                                   (model_id, new[keys[i]]))
            assert [f for (f,) in stored] == [f for f, _ in sae.encode(vectors[i]).rows()[0]]
    with raw_connection(url) as (execute, _):  # the user's schema holds no saedb tables; their table is as they left it
        assert {r[0] for r in execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")} == {
            "my_docs"}
        assert execute("SELECT count(*), count(DISTINCT venue) FROM my_docs") == [(360, 3)]
        assert [r[0] for r in execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'my_docs' "
                                      "ORDER BY ordinal_position")] == ["doc_key", "emb", "venue", "year"]
    result = CliRunner().invoke(app, ["search", "graph neural networks", "--db", f"{url}{'&' if '?' in url else '?'}schema=my_docs_sae",
                                      "--limit", "3"])
    hits = [line for line in result.output.splitlines() if line.split() and line.split()[-1] in keys]
    assert result.exit_code == 0 and len(hits) == 3, result.output
    attached = CliRunner().invoke(app, ["attach", "my_docs", "--key", "doc_key", "--vector", "emb", "--schema", "second",
                                        "--embedder", "minilm", "--db", url])
    assert attached.exit_code == 0 and "attached my_docs: 360 rows" in attached.output, attached.output
    refused = CliRunner().invoke(app, ["attach", "my_docs", "--key", "venue", "--vector", "emb", "--schema", "third", "--db", url])
    assert refused.exit_code == 2 and "must be unique" in refused.output


def test_rules_are_checked_at_every_encode_and_the_rest_is_encoded(db_url: str, minilm_rows, tmp_path: Path) -> None:
    """Rows that break attach's rules after attaching (a NULL vector, a key inserted twice, a
    NULL key) made every encode crash, or gave one document both rows' codes. Each encode and
    training now names the offending keys, leaves them out and encodes the rest."""
    keys, vectors = minilm_rows
    url = db_url if db_url.startswith("postgres") else str(tmp_path / "mine.duckdb")
    with raw_connection(url) as (execute, dialect):
        if dialect == "postgres":
            execute("CREATE EXTENSION IF NOT EXISTS vector")
        execute(f"CREATE TABLE my_docs (doc_key text, emb {'vector(384)' if dialect == 'postgres' else 'FLOAT[384]'}, venue text, year int)")
        insert_rows(execute, dialect, keys[:200], vectors[:200], 0)
    with attach_table(url, "ws", Attachment("my_docs", "doc_key", "emb"), embedder="minilm") as backend:
        model_id, _ = train_from_db(backend, TrainConfig(k=4, n_latents=64, steps=30, batch_size=64, lr=1e-3), "mine")
        with raw_connection(url) as (execute, dialect):
            insert_rows(execute, dialect, [keys[5]], vectors[250:251], 0)  # key 5 a second time, another vector
            execute(f"INSERT INTO my_docs VALUES ('{keys[201]}', NULL, 'x', 2020), (NULL, NULL, 'y', 2020)")
            insert_rows(execute, dialect, keys[210:220], vectors[210:220], 0)  # ten good new rows
        report = encode_new_documents(backend, model_id)
        assert report.encoded + report.without_features == (0 if dialect == "postgres" else 10)  # Postgres: the triggers did
        assert set(report.skipped) == {(keys[5], "the key appears 2 times"), (keys[201], "no vector"), (None, "1 row has no key")}
        per_doc = backend.query("SELECT max(n) FROM (SELECT count(*) AS n FROM sae_codes WHERE model_id = ? GROUP BY doc_id) t",
                                (model_id,))[0][0]
        assert per_doc <= 4  # no document has two rows' codes
        coded = backend.query("SELECT count(DISTINCT doc_id) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
        assert backend.model_row(model_id)["n_documents"] == coded
        assert backend.query("SELECT count(*) FROM embeddings")[0][0] == 209  # 200 + 10 - the duplicated key
        result = CliRunner().invoke(app, ["encode", "mine", "--db", f"{url}{'&' if '?' in url else '?'}schema=ws"])
        assert result.exit_code == 0 and f"{keys[5]!r} (the key appears 2 times)" in result.output, result.output


def test_attach_refuses_an_embedder_that_makes_vectors_of_another_size(minilm_rows, tmp_path: Path) -> None:
    """Issue 51: `saedb attach ... --embedder minilm` on a FLOAT[768] column succeeded, and the first
    text search ended in numpy's "matmul ... size 768 is different from 384"."""
    from saedb.errors import InvalidInputError

    keys, vectors = minilm_rows
    path = str(tmp_path / "mine.duckdb")
    make_my_docs(path, keys[:20], vectors[:20])
    with pytest.raises(InvalidInputError, match="holds 384-d vectors, and wordllama-256 makes 256-d ones"):
        attach_table(path, "my_docs_sae", Attachment("my_docs", "doc_key", "emb"), embedder="wordllama-256")
    result = CliRunner().invoke(app, ["attach", "my_docs", "--key", "doc_key", "--vector", "emb", "--schema", "ws", "--embedder", "wordllama-256",
                                      "--db", path])
    assert result.exit_code == 2 and "makes 256-d ones" in result.output, result.output
    attach_table(path, "my_docs_sae", Attachment("my_docs", "doc_key", "emb"), embedder="minilm").close()


def test_a_workspace_without_a_text_embedder_serves_all_but_text_search(minilm_rows, tmp_path: Path) -> None:
    """Issue 51: `saedb serve` refused a workspace whose vectors no embedder of saedb's made, so
    feature pages, families and the dashboard were out of reach. It serves everything but text
    search, which says what to do; search by a document (`doc=` in the app, `--like` in the CLI,
    `like=` in the client) needs no embedder."""
    import json

    import saedb
    from saedb.app.server import App

    keys, vectors = minilm_rows
    path = str(tmp_path / "mine.duckdb")
    make_my_docs(path, keys[:200], vectors[:200])
    with attach_table(path, "ws", Attachment("my_docs", "doc_key", "emb", year="year")) as backend:  # no --embedder
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=64, steps=30, batch_size=64, lr=1e-3), "mine")
    url = f"{path}?schema=ws"
    web = App(url, pool_size=2, timeout_s=10)
    try:
        for endpoint in ("/api/models", "/api/feature", "/api/dashboard", "/api/families"):
            status, _, body = web.handle(endpoint, f"model={model_id}&id=3")
            assert status == 200, (endpoint, body)
        status, _, body = web.handle("/api/search", f"doc={keys[7]}&model={model_id}&f=3:0.2")
        hits = json.loads(body)["results"]
        assert status == 200 and hits[0]["arxiv_id"] == keys[7], body  # itself first, then the documents like it
        status, _, body = web.handle("/api/search", f"q=graph+neural+networks&model={model_id}")
        assert status == 400 and "searched by a document" in json.loads(body)["error"], body
        status, _, body = web.handle("/api/search", f"doc=nope&model={model_id}")
        assert status == 400 and "no document 'nope' here" in json.loads(body)["error"], body
    finally:
        web.pool.close()
    like = CliRunner().invoke(app, ["search", "--like", keys[7], "--model", str(model_id), "--feature", "3", "--db", url])
    assert like.exit_code == 0 and like.output.split()[1] == keys[7], like.output
    text = CliRunner().invoke(app, ["search", "graph neural networks", "--db", url])
    assert text.exit_code == 2 and "--like KEY" in text.output, text.output
    with saedb.connect(url) as db:
        assert db.search(like=keys[7], limit=3).column("arxiv_id").to_pylist()[0] == keys[7]


def test_search_over_an_attached_postgres_table_uses_its_hnsw_index(pg_dsn: str) -> None:
    """Issue 51: a search through the workspace uses the HNSW index of the user's table (a trial at
    3,000 rows saw a Seq Scan and a Sort: at that size the planner may prefer them, as it does for
    the query written by hand at 5,000 rows here); without an index, attach says once that one would help."""
    import psycopg

    from saedb.backends import connect
    from saedb.search import SEARCH_SQL, prepare

    table = pq.read_table(DATA / "hh_ml_minilm.parquet").slice(0, 5000)
    keys, vectors = table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    with psycopg.connect(pg_dsn, autocommit=True) as plain:
        plain.execute("CREATE EXTENSION IF NOT EXISTS vector")
        plain.execute("CREATE TABLE big_docs (doc_key text PRIMARY KEY, emb vector(384), year int)")
        with plain.cursor().copy("COPY big_docs (doc_key, emb, year) FROM STDIN") as copy:
            for key, vector in zip(keys, vectors):
                copy.write_row((key, "[" + ",".join(f"{v:.8g}" for v in vector) + "]", 2015))
    args = ["attach", "big_docs", "--key", "doc_key", "--vector", "emb", "--year", "year", "--embedder", "minilm", "--db", pg_dsn]
    unindexed = CliRunner().invoke(app, [*args, "--schema", "ws1"])
    assert unindexed.exit_code == 0 and "big_docs.emb has no HNSW index" in unindexed.output, unindexed.output
    with psycopg.connect(pg_dsn, autocommit=True) as plain:
        plain.execute("CREATE INDEX big_docs_hnsw ON big_docs USING hnsw (emb vector_cosine_ops)")
        plain.execute("ANALYZE big_docs")
    indexed = CliRunner().invoke(app, [*args, "--schema", "ws2"])
    assert indexed.exit_code == 0 and "no HNSW index" not in indexed.output, indexed.output
    with connect(f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}schema=ws2") as backend:
        text, params = prepare(SEARCH_SQL.format(target="$1::vector", where=""), backend.dialect, [vectors[3], 10], dim=384)
        plan = "\n".join(r[0] for r in backend.query("EXPLAIN " + text, [backend.vector_param(p) if isinstance(p, np.ndarray) else p
                                                                         for p in params]))
        hits = search(backend, vectors[3], 10)
    assert "Index Scan using big_docs_hnsw on big_docs" in plan, plan
    assert hits[0].arxiv_id == keys[3]


def test_detach_removes_the_workspace_and_its_triggers_and_leaves_the_table(db_url: str, minilm_rows, tmp_path: Path) -> None:
    """Issue 51: there was no way to remove an attachment. `saedb detach SCHEMA` drops the
    workspace with its models and codes (and on Postgres the triggers it put on the table);
    the table keeps its rows and takes writes; a schema saedb did not make is refused."""
    keys, vectors = minilm_rows
    url = db_url if db_url.startswith("postgres") else str(tmp_path / "mine.duckdb")
    make_my_docs(url, keys[:100], vectors[:100])
    with attach_table(url, "ws", Attachment("my_docs", "doc_key", "emb"), embedder="minilm") as backend:
        publish_model(backend, SAE.random(384, 64, 4, seed=1), "mine")
        if backend.in_process_search:
            backend.build_approximate_index()
            assert list(tmp_path.glob("mine.duckdb.ws.hnsw*"))
    refused = CliRunner().invoke(app, ["detach", "main" if url.endswith(".duckdb") else "public", "--db", url])
    assert refused.exit_code == 2 and "not a workspace made by saedb attach" in refused.output, refused.output
    result = CliRunner().invoke(app, ["detach", "ws", "--db", url])
    assert result.exit_code == 0 and "removed the workspace ws" in result.output, result.output
    with raw_connection(url) as (execute, dialect):
        assert execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ws'") == [(0,)]
        if dialect == "postgres":
            assert execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'my_docs'::regclass AND NOT tgisinternal") == [(0,)]
        insert_rows(execute, dialect, keys[100:110], vectors[100:110], 100)  # a plain write, no workspace to keep in step
        assert execute("SELECT count(*) FROM my_docs") == [(110,)]
    assert not list(tmp_path.glob("mine.duckdb.ws.*"))
