"""Comparative analytics in SQL (feature_enrichment, feature_predictors, feature_slopes) on
2,000 real astro-ph abstracts with their MiniLM vectors, one SAE published with the same weights
on DuckDB and Postgres: figures equal to scipy's, the same rows on both backends, the planet
features found by astro-ph.EP against astro-ph.CO, attached tables, clear errors."""

from __future__ import annotations

import gzip
import itertools
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from scipy.stats import false_discovery_control, fisher_exact, linregress, norm
from typer.testing import CliRunner

import saedb
from saedb import analytics
from saedb.attach import Attachment, attach_table, raw_connection
from saedb.backends import Backend, connect
from saedb.cli import app
from saedb.errors import InvalidInputError
from saedb.loaders import load_corpus
from saedb.models import publish_model
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.conftest import ASTRO, DATA

EP = "'astro-ph.EP' = ANY(categories)"  # the same SQL in both dialects
CO = "'astro-ph.CO' = ANY(categories) AND NOT 'astro-ph.EP' = ANY(categories)"


@pytest.fixture(scope="module")
def astro_2013(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 abstracts of 2012-2014 (the corpus's first lines predate the astro-ph sub-categories)."""
    path = tmp_path_factory.mktemp("analytics") / "astro_2013.jsonl.gz"
    with gzip.open(ASTRO, "rt") as src, gzip.open(path, "wt") as dst:
        dst.writelines(itertools.islice(src, 40_000, 42_000))
    return path


@pytest.fixture(scope="module")
def databases(astro_2013: Path, pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Backend, int]]]:
    """The slice on DuckDB and Postgres, one SAE trained on DuckDB and published on both."""
    import psycopg

    name = "analytics_sql"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    opened = {"duckdb": connect(str(tmp_path_factory.mktemp("analytics") / "astro.duckdb")),
              "postgres": connect(pg_server.replace("/postgres?", f"/{name}?"))}
    for backend in opened.values():
        load_corpus(backend, astro_2013, "minilm", embeddings=DATA / "hh_astro_minilm.parquet", progress=False)
    model_id, _ = train_from_db(opened["duckdb"], TrainConfig(k=16, n_latents=256, steps=250, batch_size=256, lr=1e-3), "astro")
    pg_model = publish_model(opened["postgres"], opened["duckdb"].load_sae(model_id), "astro")
    yield {"duckdb": (opened["duckdb"], model_id), "postgres": (opened["postgres"], pg_model)}
    for backend in opened.values():
        backend.close()


@pytest.fixture(params=["duckdb", "postgres"])
def db(request: pytest.FixtureRequest, databases) -> tuple[Backend, int]:
    return databases[request.param]


def active_sets(backend: Backend, model_id: int) -> dict[int, set[int]]:
    active: dict[int, set[int]] = {}
    for feature, doc in backend.query("SELECT feature_id, doc_id FROM sae_codes WHERE model_id = ?", (model_id,)):
        active.setdefault(feature, set()).add(doc)
    return active


def doc_ids(backend: Backend, predicate: str) -> set[int]:
    return {row[0] for row in backend.query(f"SELECT doc_id FROM papers WHERE {predicate}")}


def test_enrichment_equals_scipy_and_finds_the_planet_features(db) -> None:
    backend, model_id = db
    rows = analytics.enrichment(backend, model_id, EP, CO).to_pylist()
    a, b, active = doc_ids(backend, EP), doc_ids(backend, CO), active_sets(backend, model_id)
    assert rows[0]["a_total"] == len(a) > 100 and rows[0]["b_total"] == len(b) > 500
    assert {r["feature_id"] for r in rows} == {f for f, docs in active.items() if docs & (a | b)}
    for r in rows:
        in_a, in_b = len(active[r["feature_id"]] & a), len(active[r["feature_id"]] & b)
        assert (r["a_docs"], r["b_docs"]) == (in_a, in_b)
        table = [[in_a, len(a) - in_a], [in_b, len(b) - in_b]]
        assert r["p_value"] == pytest.approx(fisher_exact(table).pvalue, abs=1e-9, rel=1e-6)
        cells = np.array(table, dtype=float) + 0.5
        log_odds = np.log(cells[0, 0] * cells[1, 1] / (cells[0, 1] * cells[1, 0]))
        half_width = norm.ppf(0.975) * np.sqrt((1 / cells).sum())
        assert (r["log_odds"], r["log_odds_low"], r["log_odds_high"]) == pytest.approx(
            (log_odds, log_odds - half_width, log_odds + half_width), abs=1e-9)
    q = false_discovery_control([r["p_value"] for r in rows], method="bh")
    assert [r["q_value"] for r in rows] == pytest.approx(list(q), abs=1e-9)
    assert [r["p_value"] for r in rows] == sorted(r["p_value"] for r in rows)

    # The planet features, found without the categories: at least half of the 20 documents each
    # fires on hardest mention a planet. Every one is over-represented in astro-ph.EP, none under.
    planet = {f for (f,) in backend.query(
        "SELECT t.feature_id FROM feature_top_documents t JOIN papers p ON p.doc_id = t.doc_id WHERE t.model_id = ? "
        "GROUP BY t.feature_id HAVING avg(CASE WHEN lower(p.title || ' ' || p.abstract) LIKE '%planet%' THEN 1.0 ELSE 0.0 END) >= 0.5",
        (model_id,))}
    over = [r["feature_id"] for r in rows if r["log_odds"] > 0 and r["q_value"] < 0.05]
    under = [r["feature_id"] for r in rows if r["log_odds"] < 0 and r["q_value"] < 0.05]
    assert len(planet) >= 3 and planet <= set(over) and not planet & set(under)
    assert over[0] in planet and len(planet & set(over[:10])) >= len(planet) / 2


def test_both_backends_give_the_same_rows(databases) -> None:
    def rows(kind: str, call: str, arguments: tuple, key) -> list[dict]:
        backend, model_id = databases[kind]
        return sorted(backend.arrow(f"SELECT * FROM {call}", (model_id, *arguments)).to_pylist(), key=key)

    for call, arguments, key in (("feature_enrichment(?, ?, ?)", (EP, CO), lambda r: r["feature_id"]),
                                 ("feature_enrichment(?, ?, ?)", ("year < 2014", None), lambda r: r["feature_id"]),
                                 ("feature_predictors(?, ?)", ("unnest(categories)",), lambda r: (r["value"], r["feature_id"])),
                                 ("feature_slopes(?, ?)", ("year",), lambda r: r["feature_id"])):
        duck, pg = rows("duckdb", call, arguments, key), rows("postgres", call, arguments, key)
        assert len(duck) == len(pg) > 0 and list(duck[0]) == list(pg[0]), call
        for d, p in zip(duck, pg):
            for column, value in d.items():
                if column == "model_id":
                    continue
                if isinstance(value, float):
                    assert p[column] == pytest.approx(value, rel=1e-9, abs=1e-12), (call, column)
                else:
                    assert p[column] == value, (call, column)


def test_the_rest_is_every_other_encoded_document(db) -> None:
    backend, model_id = db
    rows = analytics.enrichment(backend, model_id, "year < 2014").to_pylist()
    encoded = backend.query("SELECT count(DISTINCT doc_id) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
    assert rows[0]["a_total"] == len(doc_ids(backend, "year < 2014")) and rows[0]["a_total"] + rows[0]["b_total"] == encoded


def test_predictors_equal_their_definitions(db) -> None:
    backend, model_id = db
    rows = analytics.predictors(backend, model_id, "unnest(categories)").to_pylist()
    active = active_sets(backend, model_id)
    by_value: dict[str, set[int]] = {}
    for doc, categories in backend.query("SELECT doc_id, categories FROM papers"):
        for category in categories:
            by_value.setdefault(category, set()).add(doc)
    n = len(set().union(*by_value.values()))
    for r in rows:
        docs, fired = by_value[r["value"]], active[r["feature_id"]]
        both = len(docs & fired)
        assert (r["value_docs"], r["feature_docs"], r["both_docs"]) == (len(docs), len(fired), both)
        assert (r["precision"], r["recall"], r["lift"]) == pytest.approx((both / len(fired), both / len(docs), both / len(fired) / (len(docs) / n)))
        assert r["f1"] == pytest.approx(2 * both / (len(fired) + len(docs)))
    ranks = [r["rank"] for r in rows if r["value"] == "astro-ph.EP"]
    assert ranks == list(range(1, len(ranks) + 1))
    enriched = analytics.enrichment(backend, model_id, EP).to_pylist()
    best = next(r["feature_id"] for r in rows if r["value"] == "astro-ph.EP" and r["rank"] == 1)
    assert best in [r["feature_id"] for r in enriched if r["log_odds"] > 0][:10]


def test_slopes_equal_linregress(db) -> None:
    backend, model_id = db
    rows = analytics.slopes(backend, model_id, "year").to_pylist()
    docs = backend.query("SELECT doc_id, year FROM papers ORDER BY doc_id")
    years = np.array([year for _, year in docs], dtype=float)
    active = active_sets(backend, model_id)
    assert {r["feature_id"] for r in rows} == set(active)
    for r in rows:
        fit = linregress(years, np.array([doc in active[r["feature_id"]] for doc, _ in docs], dtype=float))
        # A slope near 0 is a difference of nearly equal sums: compared to 1e-9 of its standard error.
        assert r["slope"] == pytest.approx(fit.slope, rel=1e-9, abs=1e-9 * fit.stderr)
        assert r["slope_se"] == pytest.approx(fit.stderr, rel=1e-9, abs=1e-15)
        assert r["p_value"] == pytest.approx(2 * norm.sf(abs(fit.slope / fit.stderr)), abs=1e-9)
        assert r["slope_low"] < r["slope"] < r["slope_high"]
    q = false_discovery_control([r["p_value"] for r in rows], method="bh")
    assert [r["q_value"] for r in rows] == pytest.approx(list(q), abs=1e-9)


@pytest.mark.parametrize("call, arguments, message", [
    ("enrichment", ("yearx < 2014",), "feature_enrichment: set A (yearx < 2014): "),
    ("enrichment", ("year < 2014", "yearx > 1"), "feature_enrichment: set B (yearx > 1): "),
    ("enrichment", ("year < 1900",), "set A (year < 1900) holds no document encoded by model"),
    ("enrichment", ("year < 2014", "year < 2015"), "documents are in both sets"),
    ("enrichment", ("year >= 2000", "year < 1900"), "set B (year < 1900) holds no document"),
    ("enrichment", ("  ",), "set A is empty"),
    ("predictors", ("no_such_column",), "feature_predictors: column (no_such_column): "),
    ("predictors", ("CAST(NULL AS TEXT)",), "has no value on the documents encoded"),
    ("slopes", ("title",), "feature_slopes: "),
    ("slopes", ("2014",), "has one value on every document"),
    ("slopes", ("unnest(ARRAY[year, year + 1])",), "several values per document"),
    # a column with NaN or infinite values gave empty tables and exit 0
    ("slopes", ("CASE WHEN year > 2010 THEN CAST('NaN' AS DOUBLE PRECISION) ELSE year END",), "is NaN or infinite on "),
    ("slopes", ("CASE WHEN year = 2012 THEN CAST('-Infinity' AS DOUBLE PRECISION) ELSE year END",), "is NaN or infinite on "),
])
def test_bad_input_is_a_clear_error(db, call: str, arguments: tuple, message: str) -> None:
    backend, model_id = db
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        getattr(analytics, call)(backend, model_id, *arguments)


@pytest.mark.parametrize("call, argument", [("enrichment", "year < 2014"), ("predictors", "corpus"), ("slopes", "year")])
def test_an_unknown_model_is_a_clear_error(db, call: str, argument: str) -> None:
    with pytest.raises(InvalidInputError, match="unknown model 999"):
        getattr(analytics, call)(db[0], 999, argument)


def test_cli_diff_and_arrow_from_the_client(databases) -> None:
    backend, model_id = databases["duckdb"]
    url = backend.path
    runner = CliRunner()
    result = runner.invoke(app, ["diff", str(model_id), "--a", EP, "--b", CO, "--top", "3", "--db", url])
    assert result.exit_code == 0, result.output
    assert "over-represented in A:" in result.output and "under-represented in A:" in result.output
    top = analytics.enrichment(backend, model_id, EP, CO).to_pylist()[0]
    assert f"{top['feature_id']:>7}  {top['a_share']:7.3f}" in result.output
    bad = runner.invoke(app, ["diff", str(model_id), "--a", "year < 1900", "--db", url])
    assert bad.exit_code == 2 and "holds no document encoded" in bad.output
    for command in (["slopes", str(model_id), "--column", "year"], ["predictors", str(model_id), "--column", "unnest(categories)"]):
        result = runner.invoke(app, [*command, "--db", url])
        assert result.exit_code == 0 and "(no label)" in result.output, result.output
    with saedb.connect(url, read_only=True) as client:
        table = client.diff("astro", "year < 2014")
        assert table.num_rows > 0 and table.schema.field("q_value").type == "double"
        assert client.slopes("astro", "year").column_names[:4] == ["model_id", "feature_id", "label", "n_docs"]
        assert client.predictors("astro", "unnest(categories)").num_rows > 0


def test_an_attached_table_is_compared_by_its_own_columns(db_url: str, tmp_path: Path) -> None:
    """The user's table my_docs(doc_key, emb, venue, pages): the sets are over venue and pages."""
    import pyarrow.parquet as pq

    table = pq.read_table(DATA / "hh_ml_minilm.parquet").slice(0, 400)
    keys, vectors = table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    url = db_url if db_url.startswith("postgres") else str(tmp_path / "mine.duckdb")
    with raw_connection(url) as (execute, dialect):
        if dialect == "postgres":
            execute("CREATE EXTENSION IF NOT EXISTS vector")
        vector_type, cast = ("vector(384)", "::vector") if dialect == "postgres" else ("FLOAT[384]", "::FLOAT[384]")
        execute(f"CREATE TABLE my_docs (doc_key text PRIMARY KEY, emb {vector_type}, venue text, pages int)")
        execute("INSERT INTO my_docs VALUES " + ", ".join(
            f"('{k}', '[{','.join(f'{v:.8g}' for v in vec)}]'{cast}, '{'NeurIPS' if i % 4 == 0 else 'ICML'}', {6 + i % 9})"
            for i, (k, vec) in enumerate(zip(keys, vectors))))
    with attach_table(url, "my_docs_sae", Attachment("my_docs", "doc_key", "emb"), embedder="minilm") as backend:
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=64, steps=60, batch_size=64, lr=1e-3), "mine")
        rows = analytics.enrichment(backend, model_id, "venue = 'NeurIPS'").to_pylist()
        assert (rows[0]["a_total"], rows[0]["b_total"]) == (100, 300)
        values = {r["value"] for r in analytics.predictors(backend, model_id, "venue").to_pylist()}
        assert values == {"NeurIPS", "ICML"}
        assert len(analytics.slopes(backend, model_id, "pages").to_pylist()) > 0
        with pytest.raises(InvalidInputError, match="categories"):  # papers' columns are not the user's
            analytics.enrichment(backend, model_id, EP)


def test_duckdb_erfc_is_accurate_across_the_range(databases) -> None:
    from scipy.special import erfc

    backend, _ = databases["duckdb"]
    xs = [i / 20 for i in range(0, 400)]  # 0 .. 20: erfc from 1 down to 5e-176
    got = [row[0] for row in backend.query("SELECT saedb_erfc(x) FROM unnest(?) AS t(x) ORDER BY x", (xs,))]
    assert got == pytest.approx([erfc(x) for x in xs], rel=1e-12, abs=0)


@pytest.fixture(scope="module")
def dense_models(databases) -> dict[str, int]:
    """A second SAE with dense features (k=64 of 128 latents: each fires on about half the
    documents), so that its densest feature's tail is past a double's range whatever the init."""
    duck, _ = databases["duckdb"]
    model_id, _ = train_from_db(duck, TrainConfig(k=64, n_latents=128, steps=30, batch_size=256, lr=1e-3), "dense")
    return {"duckdb": model_id, "postgres": publish_model(databases["postgres"][0], duck.load_sae(model_id), "dense")}


@pytest.mark.parametrize("name", ["duckdb", "postgres"])
def test_a_set_defined_by_a_feature_itself_is_no_overflow(databases, dense_models: dict[str, int], name: str) -> None:
    """The densest feature fires on every document of A and on none of B: its table is so far in
    the tail (p = 1 / C(N, |A|) < 1e-308) that likelihoods relative to it overflow a double."""
    backend, model_id = databases[name][0], dense_models[name]
    feature, n_docs = backend.query("SELECT feature_id, count(*) FROM sae_codes WHERE model_id = ? GROUP BY feature_id "
                                    "ORDER BY count(*) DESC, feature_id LIMIT 1", (model_id,))[0]
    predicate = f"saedb_doc_id IN (SELECT doc_id FROM sae_codes WHERE model_id = {model_id} AND feature_id = {feature})"
    rows = {r["feature_id"]: r for r in analytics.enrichment(backend, model_id, predicate).to_pylist()}
    n_total = rows[feature]["a_total"] + rows[feature]["b_total"]
    log10_tables = (math.lgamma(n_total + 1) - math.lgamma(n_docs + 1) - math.lgamma(n_total - n_docs + 1)) / math.log(10)
    assert (rows[feature]["a_docs"], rows[feature]["b_docs"], rows[feature]["a_total"]) == (n_docs, 0, n_docs)
    assert log10_tables > 308  # p = 1 / C(N, |A|) is below a double's smallest normal number
    for r in rows.values():
        table = [[r["a_docs"], r["a_total"] - r["a_docs"]], [r["b_docs"], r["b_total"] - r["b_docs"]]]
        assert r["p_value"] == pytest.approx(fisher_exact(table).pvalue, abs=1e-9, rel=1e-6)
