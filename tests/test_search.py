"""Search on DuckDB ranks in process from a cached copy of the embeddings: the same results as
the portable SQL (exact), kept in step as rows are added or removed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from saedb.backends import Backend, connect
from saedb.errors import DatabaseBusyError, InvalidInputError
from saedb.loaders import load_corpus
from saedb.search import SEARCH_SQL, Steering, run_portable, search
from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_db
from tests.conftest import ASTRO, DATA, ML, assert_nearest_first, write_slice


def sql_search(backend: Backend, query: np.ndarray, limit: int, target: str = "$1::vector", extra: tuple = ()) -> list[tuple[int, float]]:
    rows = run_portable(backend, SEARCH_SQL.format(target=target, where=""), [query.astype(np.float32), limit, *extra])
    return [(row[0], float(row[4])) for row in rows]


def test_in_process_ranking_equals_the_sql(duckdb_path: str, astro_slice: Path, embedder) -> None:
    with connect(duckdb_path) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=60, batch_size=64, lr=1e-3), "search")
        assert backend.in_process_search
        check_against_sql(backend, model_id, embedder)


def check_against_sql(backend: Backend, model_id: int, embedder) -> None:
    for text in ("gamma-ray bursts", "planet formation in disks", "galaxy clusters and dark matter"):
        query = embedder.embed([text])[0]
        hits = search(backend, query, 10)
        expected = sql_search(backend, query, 10)
        assert [h.doc_id for h in hits] == [d for d, _ in expected]
        np.testing.assert_allclose([h.distance for h in hits], [d for _, d in expected], atol=1e-6)
        steered = search(backend, query, 10, [Steering("feature", 3, 1.5, model_id, "add"), Steering("feature", 7, -0.5, model_id, "add")])
        expected = sql_search(backend, query, 10, "steer_many($1::vector, $3::integer[], $4::double precision[], $5)",
                              ([3, 7], [1.5, -0.5], model_id))
        assert [h.doc_id for h in steered] == [d for d, _ in expected]
        toward = search(backend, query, 10, [Steering("feature", 3, 0.4, model_id), Steering("feature", 7, -0.2, model_id)])
        expected = sql_search(backend, query, 10, "steer_toward_many($1::vector, $3::integer[], $4::double precision[], $5)",
                              ([3, 7], [0.4, -0.2], model_id))
        assert [h.doc_id for h in toward] == [d for d, _ in expected]


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_feature_steering_is_computed_in_process_and_equals_the_sql_functions(duckdb_path: str, astro_slice: Path, embedder,
                                                                              read_only: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 36: a steered search ran a SQL statement (binding a 384-float parameter) for its
    vector; on DuckDB it is computed from the SQL functions' own weight cache, bit for bit the
    vector steer_many / steer_toward_many return, and no statement is run for it."""
    from saedb.search import steered_in_process

    with connect(duckdb_path) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=128, steps=60, batch_size=64, lr=1e-3), "search")
    with connect(duckdb_path, read_only=read_only) as backend:
        query = embedder.embed(["planet formation in disks"])[0]
        for scale, function, strengths in (("add", "steer_many", [1.5, -0.5]), ("toward", "steer_toward_many", [0.4, -0.2])):
            steps = [Steering("feature", f, s, model_id, scale) for f, s in zip([3, 7], strengths)]
            sql = run_portable(backend, f"SELECT {function}($1::vector, $2::integer[], $3::double precision[], $4)",
                               [query, [3, 7], strengths, model_id])[0][0]
            np.testing.assert_array_equal(steered_in_process(backend, query, steps), np.asarray(sql, np.float32))
        statements: list[str] = []
        run = type(backend).query
        monkeypatch.setattr(type(backend), "query", lambda self, sql, params=(): statements.append(sql) or run(self, sql, params))
        search(backend, query, 10, steps)
        assert not [sql for sql in statements if "steer" in sql]
        with pytest.raises(InvalidInputError, match="steer_toward_many: feature 9999 does not exist"):
            search(backend, query, 10, Steering("feature", 9999, 0.5, model_id))
        with pytest.raises(InvalidInputError, match="steer_toward_many: unknown model 999"):
            search(backend, query, 10, Steering("feature", 1, 0.5, 999))


def test_rows_added_or_removed_after_a_search_are_seen(tmp_path: Path, embedder) -> None:
    path = str(tmp_path / "grow.duckdb")
    first, more = write_slice(ASTRO, tmp_path / "a.jsonl.gz", 100), write_slice(ASTRO, tmp_path / "b.jsonl.gz", 200)
    with connect(path) as backend, connect(path) as other:
        load_corpus(backend, first, embedder, progress=False)
        assert len(search(backend, embedder.embed(["stars"])[0], 500)) == 100
        load_corpus(other, more, embedder, progress=False)  # another connection adds 100 papers
        newest = other.query("SELECT max(doc_id) FROM papers")[0][0]
        vector = other.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = ?", (newest,))[0]
        assert search(backend, vector, 1)[0].doc_id == newest and len(search(backend, vector, 500)) == 200
        other.execute("DELETE FROM embeddings WHERE doc_id = ?", (newest,))
        assert newest not in [h.doc_id for h in search(backend, vector, 500)]
        assert len(search(backend, vector, 500)) == 199


def test_a_table_that_changes_under_every_ranking_is_a_clear_error(tmp_path: Path, embedder, monkeypatch) -> None:
    """Each search reads the table's stamp with its papers and ranks again when the stamp moved;
    a table that never holds still is an error after a few attempts, never a hang."""
    path = str(tmp_path / "busy.duckdb")
    with connect(path) as backend:
        load_corpus(backend, write_slice(ASTRO, tmp_path / "a.jsonl.gz", 50), embedder, progress=False)
        query = embedder.embed(["stars"])[0]
        assert len(search(backend, query, 5)) == 5
        read = backend.papers_with_stamp
        calls = []

        def moving(doc_ids: np.ndarray):  # another writer's row arrives between ranking and reading, every time
            stamp, papers = read(doc_ids)
            calls.append(stamp)
            return (stamp[0] + len(calls), *stamp[1:]), papers

        monkeypatch.setattr(backend, "papers_with_stamp", moving)
        with pytest.raises(DatabaseBusyError, match="changed during each of 5 attempts"):
            search(backend, query, 5)
        assert len(calls) == 5
        monkeypatch.undo()
        assert [h.doc_id for h in search(backend, query, 5)] == [h.doc_id for h in search(backend, query, 5, exact=True)]


def test_search_within_one_corpus(db_url: str, tmp_path: Path, embedder) -> None:
    """Two corpora in one database; a corpus filter returns the exact nearest of that corpus only
    (Postgres: through the HNSW index with iterative scans)."""
    with connect(db_url) as backend:
        load_corpus(backend, write_slice(ASTRO, tmp_path / "astro.jsonl.gz", 150), embedder, progress=False)
        load_corpus(backend, write_slice(ML, tmp_path / "ml.jsonl.gz", 150), embedder, progress=False)
        corpora = dict(backend.query("SELECT corpus, count(*) FROM papers GROUP BY corpus"))
        assert corpora == {"astro": 150, "ml": 150}
        ids, vectors = zip(*backend.iter_embeddings(1000))
        doc_ids, matrix = np.concatenate(ids), np.concatenate(vectors)
        in_ml = {d for (d,) in backend.query("SELECT doc_id FROM papers WHERE corpus = 'ml'")}
        query = embedder.embed(["dark matter halos"])[0]  # an astro query, searched among ML papers
        hits = search(backend, query, 10, corpus="ml")
        assert_nearest_first([h.doc_id for h in hits], doc_ids, matrix, query, 10, np.isin(doc_ids, list(in_ml)))
        with pytest.raises(InvalidInputError, match=re.escape("no corpus 'none' here (corpora: astro, ml)")):
            search(backend, query, 10, corpus="none")  # was []: a misspelt corpus looked like one without matches
        assert search(backend, query, 10, corpus="ml", year_from=3000) == []


def test_the_in_process_index_loads_in_bounded_ranges_and_appends_only_new_rows() -> None:
    """Loading 1M vectors in one read held them twice (the read and the normalised copy);
    the index reads LOAD_BLOCK doc ids at a time into one array, and later reads only what
    was added."""
    from saedb.backends.exact_index import LOAD_BLOCK, ExactIndex, stamp_of

    rng = np.random.default_rng(0)
    doc_ids = np.concatenate([np.arange(1, 100_001), np.arange(100_050, 150_001)])  # a gap of 49 ids
    vectors = rng.standard_normal((len(doc_ids), 8)).astype(np.float32)
    reads: list[int] = []

    hashes = rng.integers(0, 2**63, len(doc_ids), dtype=np.uint64)

    def read_range(first: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = (doc_ids >= first) & (doc_ids < stop) & (doc_ids <= visible)
        reads.append(int(rows.sum()))
        return doc_ids[rows], vectors[rows], hashes[rows]

    def stamp() -> tuple[int, int, int, int]:
        held = doc_ids <= visible
        return stamp_of(doc_ids[held], hashes[held])

    index, visible = ExactIndex(), 120_000
    index.refresh(stamp(), read_range)
    assert max(reads) <= LOAD_BLOCK and len(index.doc_ids) == int((doc_ids <= visible).sum())
    np.testing.assert_allclose(index.unit_rows, vectors[doc_ids <= visible] / np.linalg.norm(vectors[doc_ids <= visible], axis=1, keepdims=True), rtol=1e-6)
    reads.clear()
    visible = 150_000
    index.refresh(stamp(), read_range)
    assert sum(reads) == 30_000 and len(index.doc_ids) == len(doc_ids)
    query = vectors[123_456]
    assert index.nearest(query, 1)[0][0] == doc_ids[123_456]


def test_steering_toward_a_feature_moves_the_results_gradually(tmp_path: Path) -> None:
    """Over 30 queries (papers) each steered toward a feature it lacks: the share of results
    carrying the feature rises at every slider step, and halfway the query's own neighbourhood
    is still there (with papers having both). Additive strengths flipped a whole top list at a
    strength that differed by query and feature."""
    corpus = write_slice(ASTRO, tmp_path / "astro3000.jsonl.gz", 3000)
    path = str(tmp_path / "gradual.duckdb")
    with connect(path) as backend:
        load_corpus(backend, corpus, "minilm", embeddings=DATA / "hh_astro_minilm.parquet", progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=16, n_latents=512, steps=400, batch_size=256, lr=1e-3), "gradual")
        doc_ids, vectors = (np.concatenate(part) for part in zip(*backend.iter_embeddings(10_000)))
        codes = backend.query("SELECT doc_id, feature_id FROM sae_codes WHERE model_id = ?", (model_id,))
        carriers: dict[int, set[int]] = {}
        for doc_id, feature in codes:
            carriers.setdefault(feature, set()).add(doc_id)
        rng = np.random.default_rng(0)
        common = [f for f, docs in carriers.items() if 0.01 <= len(docs) / len(doc_ids) <= 0.1]
        steps = [0.0, 0.2, 0.35, 0.5, 0.65, 0.8]
        carry, near, both = (np.zeros(len(steps)) for _ in range(3))
        for row in rng.choice(len(doc_ids), 30, replace=False):
            query = vectors[row]
            own = {f for f, docs in carriers.items() if doc_ids[row] in docs}
            feature = int(rng.choice([f for f in common if f not in own]))
            neighbourhood = {hit.doc_id for hit in search(backend, query, 50)}
            for i, fraction in enumerate(steps):
                hits = [h.doc_id for h in search(backend, query, 10, Steering("feature", feature, fraction, model_id))]
                carry[i] += np.mean([h in carriers[feature] for h in hits]) / 30
                near[i] += np.mean([h in neighbourhood for h in hits]) / 30
                both[i] += np.mean([h in carriers[feature] and h in neighbourhood for h in hits]) / 30
    print("fraction", steps, "\ncarry", carry.round(2), "\nnear the query", near.round(2), "\nboth", both.round(2))
    assert np.all(np.diff(carry) > 0), carry  # rises at each of the 5 steps
    middle = steps.index(0.5)
    assert near[middle] >= 0.3 and both[middle] > 0.03, (near, both)  # halfway, the query's topic is not lost
    assert carry[-1] >= 0.5 and near[0] > 0.999


def test_exact_search_ranks_every_row_where_the_index_would_not(db_url: str, tmp_path: Path, embedder) -> None:
    """exact=True returns the exact nearest even where the approximate index returns less:
    Postgres's HNSW scan with ef_search 1 and no iterative scan yields one row for LIMIT 10;
    DuckDB's graph is asked and the answer compared with numpy's."""
    with connect(db_url) as backend:
        load_corpus(backend, write_slice(ASTRO, tmp_path / "astro.jsonl.gz", 300), embedder, progress=False)
        if backend.in_process_search:
            backend.build_approximate_index()
            assert backend.indexes.approximate.built
        else:
            for setting in ("hnsw.ef_search = 1", "hnsw.iterative_scan = off", "enable_seqscan = off"):
                backend.execute(f"SET {setting}")
        ids, vectors = zip(*backend.iter_embeddings(1000))
        doc_ids, matrix = np.concatenate(ids), np.concatenate(vectors)
        for text in ("dark matter halos", "stellar winds", "radio pulsars"):
            query = embedder.embed([text])[0]
            assert_nearest_first([h.doc_id for h in search(backend, query, 10, exact=True)], doc_ids, matrix, query, 10)
            if not backend.in_process_search:
                assert len(search(backend, query, 10)) < 10  # the index was in use
