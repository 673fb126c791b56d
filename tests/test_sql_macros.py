"""The pure-SQL macros persisted in DuckDB files: a plain DuckDB client (no saedb) calls
sae_encode, sae_decode, steer, steer_many and steer_family and gets the numpy reference's
results; inside saedb the same names run the Python UDFs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from saedb.backends import connect
from saedb.families import build_families
from saedb.interp import OfflineLabeller, corpus_stats, run_autointerp
from saedb.loaders import load_corpus
from saedb.sae import toward
from saedb.search import Steering, search
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.conftest import assert_nearest_first, embeddings_of

PLAIN_CLIENT = textwrap.dedent("""
    import json, sys
    import duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    out = {"saedb_loaded": any(name.startswith("saedb") for name in sys.modules)}
    for name, sql in json.loads(sys.argv[2]).items():
        try:
            out[name] = con.execute(sql).fetchall()
        except duckdb.Error as exc:
            out[name] = {"error": str(exc)}
    print(json.dumps(out))
""")


def plain_duckdb(path: str, queries: dict[str, str]) -> dict:
    """Run queries with the duckdb package alone, in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", PLAIN_CLIENT, path, json.dumps(queries)],
                            capture_output=True, text=True, timeout=300, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def saedb_file(tmp_path_factory: pytest.TempPathFactory, astro_slice: Path, embedder) -> tuple[str, int, int]:
    path = str(tmp_path_factory.mktemp("macros") / "plain.duckdb")
    with connect(path) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=120, batch_size=64, lr=1e-3), "plain")
        run_autointerp(backend, model_id, OfflineLabeller(corpus_stats(backend)), limit=30, concurrency=2)
        backend.execute("UPDATE feature_labels SET clean = TRUE WHERE model_id = ?", (model_id,))
        build_families(backend, model_id)
        family = backend.query("SELECT min(family_id) FROM feature_families WHERE model_id = ?", (model_id,))[0][0]
    return path, model_id, family


def test_a_plain_duckdb_client_gets_the_reference_results(saedb_file: tuple[str, int, int]) -> None:
    path, model, family = saedb_file
    rows = "FROM embeddings WHERE doc_id <= 40 ORDER BY doc_id"
    got = plain_duckdb(path, {
        "encode": f"SELECT sae_encode(embedding, {model}) {rows}",
        "decode": f"SELECT sae_decode(sae_encode(embedding, {model}), {model}) {rows}",
        "steer": f"SELECT steer(embedding, 5, -0.7, {model}) {rows}",
        "steer_many": f"SELECT steer_many(embedding, [5, 9, 5], [0.5, -1.25, 0.25], {model}) {rows}",
        "steer_family": f"SELECT steer_family(embedding, {family}, 0.8, {model}) {rows}",
        "steer_toward": f"SELECT steer_toward(embedding, 5, 0.35, {model}) {rows}",
        "steer_toward_away": f"SELECT steer_toward(embedding, 9, -0.5, {model}) {rows}",
        "steer_toward_family": f"SELECT steer_toward_family(embedding, {family}, 0.6, {model}) {rows}",
    })
    assert got.pop("saedb_loaded") is False
    with connect(path, read_only=True) as backend:
        sae = backend.load_sae(model)
        x = backend.fetch_vectors(f"SELECT embedding {rows}")
        members = [r[0] for r in backend.query("SELECT feature_id FROM family_members WHERE model_id = ? AND family_id = ? "
                                               "ORDER BY feature_id", (model, family))]
    codes = sae.encode(x)
    for row, expected in zip(got["encode"], codes.rows()):  # SQL's sums and numpy's differ in the last bits: same features, close values
        in_sql = dict(sorted((c["feature_id"], c["activation"]) for c in row[0]))
        assert list(in_sql) == sorted(f for f, _ in expected)
        np.testing.assert_allclose(list(in_sql.values()), [a for _, a in sorted(expected)], atol=1e-6)
    reference = {
        "decode": sae.decode(codes),
        "steer": sae.steer(x, 5, -0.7),
        "steer_many": sae.steer(x, [5, 9, 5], [0.5, -1.25, 0.25]),
        "steer_family": sae.steer(x, members, sae.family_strengths(members, 0.8)),
        "steer_toward": sae.steer_toward(x, [5], [0.35]),
        "steer_toward_away": sae.steer_toward(x, [9], [-0.5]),
        "steer_toward_family": toward(x, sae.family_direction(members), 0.6),
    }
    for name, expected in reference.items():
        np.testing.assert_allclose(np.array([r[0] for r in got[name]], dtype=np.float32), expected, atol=2e-6, err_msg=name)


def test_a_steered_search_from_a_plain_client_matches_saedb(saedb_file: tuple[str, int, int], embedder) -> None:
    path, model, _ = saedb_file
    query = embedder.embed(["gamma-ray bursts and their afterglows"])[0]
    literal = "[" + ", ".join(f"{v:.9g}" for v in query) + f"]::FLOAT[{query.shape[0]}]"
    sql = (f"SELECT p.doc_id FROM embeddings e JOIN papers p USING (doc_id) "
           f"ORDER BY array_cosine_distance(e.embedding, steer_many({literal}, [5, 9], [1.5, -0.5], {model})) LIMIT 10")
    got = plain_duckdb(path, {"search": sql})
    with connect(path, read_only=True) as backend:
        expected = search(backend, query, 10, [Steering("feature", 5, 1.5, model, "add"), Steering("feature", 9, -0.5, model, "add")])
        doc_ids, matrix = embeddings_of(backend)
        steered = backend.load_sae(model).steer(query, [5, 9], [1.5, -0.5])[0]
    for found in ([r[0] for r in got["search"]], [hit.doc_id for hit in expected]):  # DuckDB's kernel and saedb's
        assert_nearest_first(found, doc_ids, matrix, steered, 10)


def test_saedb_runs_its_udfs_under_the_same_names(saedb_file: tuple[str, int, int]) -> None:
    path, model, _ = saedb_file
    with connect(path, read_only=True) as backend:
        kinds = set(backend.query("SELECT database_name, function_type FROM duckdb_functions() WHERE function_name = 'steer'"))
        assert {("temp", "macro"), ("plain", "macro")} <= kinds  # saedb's shadow and the file's pure-SQL twin
        via_udf, via_file = backend.query(
            f"SELECT steer(embedding, 5, 0.3, {model}), plain.main.steer(embedding, 5, 0.3, {model}) FROM embeddings WHERE doc_id = 1")[0]
        np.testing.assert_allclose(via_udf, via_file, atol=2e-6)


def test_plain_client_errors_are_clear(saedb_file: tuple[str, int, int]) -> None:
    path, model, _ = saedb_file
    got = plain_duckdb(path, {
        "feature": f"SELECT steer(embedding, 99999, 1.0, {model}) FROM embeddings LIMIT 1",
        "model": "SELECT sae_encode(embedding, 777) FROM embeddings LIMIT 1",
        "family": f"SELECT steer_family(embedding, 99999, 1.0, {model}) FROM embeddings LIMIT 1",
        "lengths": f"SELECT steer_many(embedding, [1, 2], [1.0], {model}) FROM embeddings LIMIT 1",
        # a typo in a model name returned NULL, and then every function returned NULL silently
        "typo": "SELECT sae_model_id('plian')",
        "typo_steer": "SELECT steer(embedding, 1, 0.5, sae_model_id('plian')) FROM embeddings LIMIT 1",
        "null_model": "SELECT sae_encode(embedding, NULL) FROM embeddings LIMIT 1",
        "null_steer": "SELECT steer(embedding, 1, 0.5, NULL) FROM embeddings LIMIT 1",
        "null_decode": "SELECT sae_decode(sae_encode(embedding, 1), NULL) FROM embeddings LIMIT 1",
        "null_many": "SELECT steer_many(embedding, [1], [0.5], NULL) FROM embeddings LIMIT 1",
        "null_family": "SELECT steer_family(embedding, 1, 0.5, NULL) FROM embeddings LIMIT 1",
    })
    assert f"model {model} has no feature 99999" in got["feature"]["error"]
    assert "unknown model 777" in got["model"]["error"]
    assert "has no family 99999" in got["family"]["error"]
    assert "different lengths" in got["lengths"]["error"]
    assert "no published model named 'plian'" in got["typo"]["error"] and "no published model named" in got["typo_steer"]["error"]
    for name in ("null_model", "null_steer", "null_decode", "null_many", "null_family"):
        assert isinstance(got[name], dict) and "model is NULL" in got[name]["error"], (name, got[name])


def test_the_duckdb_cli_from_pypi_opens_a_saedb_file_and_steers(saedb_file: tuple[str, int, int], embedder) -> None:
    """duckdb-cli 1.5.6 (the newest CLI on PyPI) could not open a file written by duckdb 2.0
    ("version number 69, but we can only read versions between 64 and 68")."""
    import shutil

    cli = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    assert cli, "the dev extra installs duckdb-cli"
    path, model, _ = saedb_file
    query = embedder.embed(["gamma-ray bursts and their afterglows"])[0]
    literal = "[" + ", ".join(f"{v:.9g}" for v in query) + f"]::FLOAT[{query.shape[0]}]"
    sql = (f"SELECT p.doc_id FROM embeddings e JOIN papers p USING (doc_id) "
           f"ORDER BY array_cosine_distance(e.embedding, steer_toward({literal}, 5, 0.5, {model})), p.doc_id LIMIT 10")
    done = subprocess.run([cli, "-readonly", "-csv", "-noheader", path, "-c", sql], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with connect(path, read_only=True) as backend:
        expected = search(backend, query, 10, Steering("feature", 5, 0.5, model))
        doc_ids, matrix = embeddings_of(backend)
        steered = backend.load_sae(model).steer_toward(query, [5], [0.5])[0]
    for found in ([int(line) for line in done.stdout.split()], [hit.doc_id for hit in expected]):  # the CLI's kernel and saedb's
        assert_nearest_first(found, doc_ids, matrix, steered, 10)


def test_duckdb_engine_reflects_and_queries_a_saedb_file(saedb_file: tuple[str, int, int]) -> None:
    """duckdb-engine (SQLAlchemy, what Superset-style tools browse with): tables, views, their
    columns, and SQL with saedb's macros. Column reflection failed ("pg_catalog.pg_collation not
    found") under SQLAlchemy 2.1, whose Postgres dialect duckdb-engine 0.17 inherits: the bi extra
    pins SQLAlchemy < 2.1."""
    import sqlalchemy

    path, model, _ = saedb_file
    engine = sqlalchemy.create_engine(f"duckdb:///{path}", connect_args={"read_only": True})
    try:
        inspector = sqlalchemy.inspect(engine)
        assert {"papers", "embeddings", "sae_codes", "feature_summary"} <= set(inspector.get_table_names()) | set(
            inspector.get_view_names())
        assert [c["name"] for c in inspector.get_columns("papers")][:3] == ["doc_id", "arxiv_id", "title"]
        assert "interpretability" in {c["name"] for c in inspector.get_columns("feature_summary")}
        with engine.connect() as conn:
            n = conn.execute(sqlalchemy.text(f"SELECT count(*) FROM embeddings, unnest(sae_encode(embedding, {model}))")).scalar()
        assert n > 400
    finally:
        engine.dispose()


def test_sqlalchemy_autoloads_every_table_and_bi_view_of_a_saedb_file(saedb_file: tuple[str, int, int]) -> None:
    """Issue 33: with duckdb-engine, `Table(..., autoload_with=engine)` (what Superset does for a
    dataset) failed on every table: "Type with name REGCLASS does not exist!". Through saedb's
    dialect (duckdb+saedb://, an entry point) keys and constraints reflect and every BI view
    autoloads and answers a query built from its reflected columns."""
    import sqlalchemy

    path, _, _ = saedb_file
    plain = sqlalchemy.create_engine(f"duckdb:///{path}", connect_args={"read_only": True})
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="REGCLASS"):  # duckdb-engine alone: the reason for the dialect
        sqlalchemy.Table("papers", sqlalchemy.MetaData(), autoload_with=plain)
    plain.dispose()
    engine = sqlalchemy.create_engine(f"duckdb+saedb:///{path}", connect_args={"read_only": True})
    try:
        inspector = sqlalchemy.inspect(engine)
        assert inspector.get_pk_constraint("papers")["constrained_columns"] == ["doc_id"]
        assert inspector.get_unique_constraints("papers") == [{"name": "papers_arxiv_id_key", "column_names": ["arxiv_id"]}]
        papers = sqlalchemy.Table("papers", sqlalchemy.MetaData(), autoload_with=engine)
        assert list(papers.primary_key.columns.keys()) == ["doc_id"]
        for view in ("feature_summary", "feature_trends", "feature_top_documents", "document_features"):
            table = sqlalchemy.Table(view, sqlalchemy.MetaData(), autoload_with=engine)
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.select(table.c.model_id, table.c.feature_id).limit(5)).fetchall()
            assert len(rows) == 5, view
    finally:
        engine.dispose()


def test_a_plain_client_and_the_duckdb_cli_run_the_analytics(saedb_file: tuple[str, int, int]) -> None:
    """feature_enrichment, feature_predictors and feature_slopes are persisted table macros:
    the duckdb package alone and the PyPI CLI get saedb's rows."""
    import shutil

    from saedb import analytics

    path, model, _ = saedb_file
    calls = {"enrichment": f"SELECT feature_id, p_value, q_value FROM feature_enrichment({model}, 'year < 2007', NULL) ORDER BY feature_id",
             "predictors": f"SELECT value, feature_id, lift FROM feature_predictors({model}, 'corpus') ORDER BY value, feature_id",
             "slopes": f"SELECT feature_id, slope FROM feature_slopes({model}, 'year') ORDER BY feature_id"}
    plain = plain_duckdb(path, calls)
    assert not plain["saedb_loaded"]
    with connect(path, read_only=True) as backend:
        expected = {
            "enrichment": sorted((r["feature_id"], r["p_value"], r["q_value"]) for r in analytics.enrichment(backend, model, "year < 2007").to_pylist()),
            "predictors": sorted((r["value"], r["feature_id"], r["lift"]) for r in analytics.predictors(backend, model, "corpus").to_pylist()),
            "slopes": sorted((r["feature_id"], r["slope"]) for r in analytics.slopes(backend, model, "year").to_pylist()),
        }
    for name, rows in expected.items():  # DuckDB's parallel sums may differ in the last bit between runs
        got = [tuple(row) for row in plain[name]]
        keys = lambda table: [tuple(v for v in row if not isinstance(v, float)) for row in table]  # noqa: E731
        numbers = lambda table: [v for row in table for v in row if isinstance(v, float)]  # noqa: E731
        assert keys(got) == keys(rows) and rows, name
        assert numbers(got) == pytest.approx(numbers(rows), rel=1e-12, abs=1e-15), name
    cli = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    done = subprocess.run([cli, "-readonly", "-csv", "-noheader", path, "-c", calls["slopes"]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [int(line.split(",")[0]) for line in done.stdout.split()] == [row[0] for row in expected["slopes"]]
