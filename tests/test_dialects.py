"""sqlglot dialects with pgvector operators: parsing, precedence, round trips, and one
portable steered search that gives the same answer on DuckDB and Postgres (HNSW)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlglot

from saedb.backends import connect
from saedb.dialects import CosineDistance, NegativeInnerProduct, SaedbPostgres, prepare, translate
from saedb.embedders import WordLlamaEmbedder
from saedb.errors import InvalidInputError
from saedb.loaders import load_corpus
from saedb.models import publish_model
from saedb.sae import SAE
from saedb.search import Steering, search


def test_stock_sqlglot_mangles_pgvector_operators() -> None:
    """Why the custom dialects exist."""
    assert "IS NOT DISTINCT FROM" in sqlglot.transpile("SELECT a <=> b", read="postgres", write="postgres")[0]
    with pytest.raises(sqlglot.errors.ParseError):
        sqlglot.parse_one("SELECT a <#> b", read="postgres")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a <=> b FROM t",
        "SELECT a <#> b FROM t",
        "SELECT a <-> b FROM t",
        "SELECT p.title FROM embeddings AS e JOIN papers AS p ON p.doc_id = e.doc_id ORDER BY e.embedding <=> CAST($1 AS VECTOR) LIMIT 5",
    ],
)
def test_postgres_round_trip_is_identity(sql: str) -> None:
    assert translate(sql, "postgres") == sql


def test_operators_parse_at_postgres_precedence() -> None:
    tree = sqlglot.parse_one("SELECT a <=> b + c < 0.5, x <#> y * 2", read=SaedbPostgres)
    comparison, product = tree.selects
    assert isinstance(comparison.this, CosineDistance) and comparison.this.expression.sql() == "b + c"
    assert isinstance(product, NegativeInnerProduct) and product.expression.sql() == "y * 2"


def test_duckdb_rendering_and_round_trip_back() -> None:
    duck = translate("SELECT a <=> b, a <#> b, a <-> b, CAST(q AS vector) FROM t", "duckdb", dim=8)
    assert duck == ("SELECT ARRAY_COSINE_DISTANCE(a, b), ARRAY_NEGATIVE_INNER_PRODUCT(a, b), ARRAY_DISTANCE(a, b), "
                    "CAST(q AS REAL[8]) FROM t")
    assert translate(duck, "postgres", read="duckdb") == "SELECT a <=> b, a <#> b, a <-> b, CAST(q AS REAL[8]) FROM t"


def test_prepare_orders_numbered_parameters() -> None:
    sql, params = prepare("SELECT a <=> $2::vector, $1 FROM t WHERE b = $2", "duckdb", ["first", "second"], dim=4)
    assert sql == "SELECT ARRAY_COSINE_DISTANCE(a, CAST(? AS REAL[4])), ? FROM t WHERE b = ?"
    assert params == ["second", "first", "second"]
    with pytest.raises(InvalidInputError, match="more placeholders"):
        prepare("SELECT $3", "duckdb", [1])
    with pytest.raises(InvalidInputError, match="cannot parse"):
        prepare("SELEC nothing FROM", "postgres")


def test_one_portable_query_same_answer_on_both_backends(tmp_path, pg_dsn: str, astro_slice) -> None:
    embedder = WordLlamaEmbedder()
    sae = SAE.random(d=256, n=256, k=16, seed=5)
    query = embedder.embed(["gamma-ray bursts and their afterglows"])[0]
    answers = {}
    for url in (str(tmp_path / "portable.duckdb"), pg_dsn):
        with connect(url) as backend:
            load_corpus(backend, astro_slice, embedder, progress=False)
            model_id = publish_model(backend, sae, "portable")
            if backend.dialect == "postgres":
                backend.execute("SET hnsw.ef_search = 400")
                backend.execute("SET enable_seqscan = off")  # 400 rows: a scan is cheaper, but the index must serve
                plan = "\n".join(r[0] for r in backend.query(
                    "EXPLAIN SELECT doc_id FROM embeddings ORDER BY embedding <=> (SELECT steer(CAST(? AS vector), 3, 0.5, ?)) LIMIT 5",
                    (backend.vector_param(query), model_id)))
                assert "Index Scan using embeddings_hnsw" in plan  # search's form: the steered vector as a scalar subquery
            plain = search(backend, query, limit=5)
            steered = search(backend, query, limit=5, steering=Steering("feature", 3, 0.5, model_id))
            answers[backend.dialect] = ([h.arxiv_id for h in plain], [h.arxiv_id for h in steered],
                                        np.array([h.distance for h in steered]))
    assert answers["duckdb"][0] == answers["postgres"][0]
    assert answers["duckdb"][1] == answers["postgres"][1] != answers["duckdb"][0]
    np.testing.assert_allclose(answers["duckdb"][2], answers["postgres"][2], rtol=1e-5, atol=1e-6)
