"""Codes, counts and views follow the embeddings table as an index does (issue 51), on DuckDB:
saedb's own tables and a user's attached table, changed by a plain client (INSERT, UPDATE of
vectors and of metadata, DELETE of 10% of the rows). Until `saedb encode` every read of codes is
one clear error naming it; after it every surface equals a from-scratch encode of the new table."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

from saedb.attach import Attachment, attach_table
from saedb.backends import Backend, connect
from saedb.cli import app
from saedb.families import compute_cooccurrence
from saedb.models import publish_model
from saedb.sae import SAE
from tests.conftest import DatabaseTemplates, copied, load_slice
from tests.test_attach import make_my_docs, minilm_rows  # noqa: F401  (a fixture)

SURFACES = {  # what a reader of codes sees, each ordered so that two encodes compare row for row
    "sae_codes": "SELECT doc_id, feature_id, activation FROM sae_codes WHERE model_id = ? ORDER BY doc_id, feature_id",
    "document_features": "SELECT doc_id, arxiv_id, title, year, feature_id, activation FROM document_features WHERE model_id = ? "
                         "ORDER BY doc_id, feature_id",
    "feature_summary": "SELECT feature_id, n_docs, density, mean_activation, max_activation FROM feature_summary WHERE model_id = ? "
                       "ORDER BY feature_id",
    "feature_top_documents": "SELECT feature_id, rank, doc_id, title, activation FROM feature_top_documents WHERE model_id = ? "
                             "ORDER BY feature_id, rank",
    "feature_trends": "SELECT feature_id, year, n_docs, share_of_year FROM feature_trends WHERE model_id = ? ORDER BY feature_id, year",
    "feature_cooccurrence": "SELECT feature_i, feature_j, n_docs FROM feature_cooccurrence WHERE model_id = ? ORDER BY feature_i, feature_j",
    "n_documents": "SELECT n_documents FROM sae_models WHERE model_id = ?",
}
STALE = "are behind the embeddings table"


@pytest.fixture
def loaded_path(request: pytest.FixtureRequest, tmp_path: Path, templates: DatabaseTemplates, astro_slice: Path, embedder) -> str:
    """A DuckDB file holding the 400-paper astro slice (a copy of the session's)."""
    path = str(tmp_path / "own.duckdb")
    copied(request, templates, "astro_400", load_slice(astro_slice, embedder), path)
    return path


def surfaces(backend: Backend, model_id: int) -> dict[str, list[tuple]]:
    return {name: backend.query(sql, (model_id,)) for name, sql in SURFACES.items()}


def from_scratch(backend: Backend, sae: SAE) -> dict[str, list[tuple]]:
    """The surfaces of the same weights published anew over the table as it is now."""
    fresh = publish_model(backend, sae, "from-scratch")
    compute_cooccurrence(backend, fresh)
    return surfaces(backend, fresh)


def assert_same_surfaces(after: dict[str, list[tuple]], expected: dict[str, list[tuple]], documents_counted_alike: bool = True) -> None:
    """Equal surfaces: activations (another batch, another product: numpy's or PL/pgSQL's) equal
    to float32 rounding, everything else exactly. ``documents_counted_alike`` False: Postgres
    counts the documents with codes in n_documents, a fresh publish every document."""
    for name in SURFACES:
        if name == "sae_codes":
            assert [r[:2] for r in after[name]] == [r[:2] for r in expected[name]]
            np.testing.assert_allclose([r[2] for r in after[name]], [r[2] for r in expected[name]], rtol=1e-5, atol=1e-6)
        elif name in ("document_features", "feature_top_documents"):
            assert [r[:-1] for r in after[name]] == [r[:-1] for r in expected[name]], name
        elif name == "feature_summary":
            assert [r[:2] for r in after[name]] == [r[:2] for r in expected[name]]
            np.testing.assert_allclose([r[2:] for r in after[name]], [r[2:] for r in expected[name]], rtol=1e-5)
        elif name != "n_documents" or documents_counted_alike:
            assert after[name] == expected[name], name


class Published(NamedTuple):
    """A model (with co-occurrence counts) published over saedb's tables or an attached my_docs."""
    url: str
    table: str
    key: str
    vector: str
    sae: SAE
    model_id: int
    keys: list


def publish_over(where: str, own_url: str, attached_base: str, minilm_rows) -> Published:
    """``where`` "saedb tables": over the papers already loaded at ``own_url``; else over a
    300-row my_docs made in ``attached_base`` and attached as workspace my_docs_sae."""
    if where == "saedb tables":
        url, table, key, vector = own_url, "embeddings", "doc_id", "embedding"
        backend = connect(url)
    else:
        keys, vectors = minilm_rows
        make_my_docs(attached_base, keys[:300], vectors[:300])
        backend = attach_table(attached_base, "my_docs_sae", Attachment("my_docs", "doc_key", "emb", year="year"), embedder="minilm")
        url, table, key, vector = f"{attached_base}{'&' if '?' in attached_base else '?'}schema=my_docs_sae", "my_docs", "doc_key", "emb"
    with backend:
        sae = SAE.random(backend.require_embedder()[1], 96, 8, seed=4)
        model_id = publish_model(backend, sae, "follows")
        compute_cooccurrence(backend, model_id)
        keys = [r[0] for r in backend.query(f"SELECT {key} FROM {table} ORDER BY {key}")]
    return Published(url, table, key, vector, sae, model_id, keys)


def a_tenth_of(keys: list) -> tuple[list, list, list, list]:
    """The keys a plain client changes: 3% rewritten, 2% retitled or re-yeared, 3% deleted, 2% copied under new keys."""
    n = len(keys)
    return keys[: n * 3 // 100], keys[n // 10 : n // 10 + n // 50], keys[-(n * 3 // 100):], keys[n // 5 : n // 5 + n // 50]


def change_a_tenth(path: str, table: str, key: str, vector: str, keys: list) -> None:
    """As a plain DuckDB client: rewrite 3% of the vectors, retitle or re-year 2%, delete 3%,
    insert 2% (copies of other rows' vectors under new keys)."""
    con = duckdb.connect(path)
    rewritten, retitled, deleted, copied = a_tenth_of(keys)
    marks = lambda ks: ", ".join(repr(k) if isinstance(k, str) else str(k) for k in ks)  # noqa: E731
    hashed = f", embedding_hash = hash(list_transform({vector}, lambda x: -x))" if table == "embeddings" else ""
    con.execute(f"UPDATE {table} SET {vector} = list_transform({vector}, lambda x: -x){hashed} WHERE {key} IN ({marks(rewritten)})")
    con.execute(f"DELETE FROM {table} WHERE {key} IN ({marks(deleted)})")
    if table == "embeddings":
        con.execute(f"UPDATE papers SET title = title || ' (revised)', year = year + 1 WHERE doc_id IN ({marks(retitled)})")
        first = con.execute("SELECT max(doc_id) FROM papers").fetchone()[0] + 1
        for i, doc_id in enumerate(copied):
            con.execute("INSERT INTO papers (doc_id, arxiv_id, title, abstract, categories, subjects, published, year, corpus) "
                        "SELECT ?, arxiv_id || '-copy', title || ' (copy)', abstract, categories, subjects, published, year, corpus "
                        "FROM papers WHERE doc_id = ?", [first + i, doc_id])
            con.execute("INSERT INTO embeddings SELECT ?, embedding, embedding_hash FROM embeddings WHERE doc_id = ?", [first + i, doc_id])
    else:
        con.execute(f"UPDATE {table} SET year = year + 1 WHERE {key} IN ({marks(retitled)})")
        con.execute(f"INSERT INTO {table} SELECT {key} || '-copy', {vector}, venue, year FROM {table} WHERE {key} IN ({marks(copied)})")
    con.close()


@pytest.mark.parametrize("where", ["saedb tables", "attached table"])
def test_codes_counts_and_views_follow_a_plain_clients_writes(where: str, tmp_path: Path, loaded_path: str, minilm_rows) -> None:
    url, table, key, vector, sae, model_id, keys = publish_over(where, loaded_path, str(tmp_path / "mine.duckdb"), minilm_rows)
    change_a_tenth(url.split("?")[0], table, key, vector, keys)
    with connect(url) as backend:
        for name, sql in SURFACES.items():
            if name not in ("feature_cooccurrence", "n_documents"):  # tables of figures: current once encode ran
                with pytest.raises(duckdb.InvalidInputException, match=f"model {model_id} {STALE}.*run `saedb encode`"):
                    backend.query(sql, (model_id,))
    stale = CliRunner().invoke(app, ["sql", "SELECT count(*) FROM feature_summary", "--db", url])
    assert stale.exit_code == 2 and f"the codes of model {model_id} {STALE}" in stale.output, stale.output
    encoded = CliRunner().invoke(app, ["encode", "--db", url])
    assert encoded.exit_code == 0 and "removed the codes of" in encoded.output, encoded.output
    with connect(url) as backend:
        after = surfaces(backend, model_id)
        assert after["n_documents"] == [(backend.count("embeddings"),)]
        expected = from_scratch(backend, sae)
    assert_same_surfaces(after, expected)


def change_a_tenth_on_postgres(dsn: str, table: str, key: str, vector: str, keys: list) -> None:
    """As a plain psycopg client, one statement each: rewrite 3% of the vectors (negated), retitle
    or re-year 2%, delete 3%, insert 2% (other rows' vectors, negated, under new keys; no two
    rows share a vector, so no two activations tie whichever kernel computed them)."""
    import psycopg

    rewritten, retitled, deleted, copies = a_tenth_of(keys)
    negated = f"{vector} * array_fill(-1::real, ARRAY[vector_dims({vector})])::vector"
    with psycopg.connect(dsn, autocommit=True) as plain:
        plain.execute(f"UPDATE {table} SET {vector} = {negated} WHERE {key} = ANY(%s)", (rewritten,))
        plain.execute(f"DELETE FROM {table} WHERE {key} = ANY(%s)", (deleted,))
        if table == "embeddings":
            plain.execute("UPDATE papers SET title = title || ' (revised)', year = year + 1 WHERE doc_id = ANY(%s)", (retitled,))
            first = plain.execute("SELECT max(doc_id) + 1 FROM papers").fetchone()[0]
            new_ids = list(range(first, first + len(copies)))
            plain.execute("INSERT INTO papers (doc_id, arxiv_id, title, abstract, categories, subjects, published, year, corpus) "
                          "SELECT m.new_id, arxiv_id || '-copy', title || ' (copy)', abstract, categories, subjects, published, year, "
                          "corpus FROM papers JOIN unnest(%s::bigint[], %s::bigint[]) AS m(new_id, old_id) ON doc_id = m.old_id",
                          (new_ids, copies))
            plain.execute(f"INSERT INTO embeddings SELECT m.new_id, {negated} FROM embeddings "
                          "JOIN unnest(%s::bigint[], %s::bigint[]) AS m(new_id, old_id) ON doc_id = m.old_id", (new_ids, copies))
        else:
            plain.execute(f"UPDATE {table} SET year = year + 1 WHERE {key} = ANY(%s)", (retitled,))
            plain.execute(f"INSERT INTO {table} SELECT {key} || '-copy', {negated}, venue, year FROM {table} WHERE {key} = ANY(%s)",
                          (copies,))


@pytest.mark.parametrize("where", ["saedb tables", "attached table"])
def test_postgres_keeps_codes_counts_and_views_in_step_with_a_plain_clients_writes(
        where: str, request: pytest.FixtureRequest, pg_dsn: str, templates: DatabaseTemplates, astro_slice: Path, embedder,
        minilm_rows) -> None:
    """On Postgres the database keeps them in step, as it keeps an index: statement-level
    triggers (on saedb's embeddings table, or on the user's attached table) remove the codes of
    deleted rows and encode inserted and rewritten vectors, for every published model, in the
    writer's own transaction. Without any saedb command every surface equals a from-scratch
    encode of the new table, and a later `saedb encode` finds nothing to do."""
    if where == "saedb tables":
        copied(request, templates, "astro_400", load_slice(astro_slice, embedder), pg_dsn)
    url, table, key, vector, sae, model_id, keys = publish_over(where, pg_dsn, pg_dsn, minilm_rows)
    change_a_tenth_on_postgres(pg_dsn, table, key, vector, keys)
    with connect(url) as backend:  # before any saedb command
        after = surfaces(backend, model_id)
        expected = from_scratch(backend, sae)
    assert_same_surfaces(after, expected, documents_counted_alike=False)
    encoded = CliRunner().invoke(app, ["encode", "follows", "--db", url])
    assert encoded.exit_code == 0 and "encoded 0 documents" in encoded.output and "removed" not in encoded.output, encoded.output
