"""The HNSW graph of a DuckDB database (saedb/backends/approximate_index.py): built from the
database's vectors, saved beside the file and opened without reading them, kept in step with
added and removed rows, filters keeping their recall, and exact search still exact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

import saedb.backends.approximate_index as approximate_index
import saedb.backends.duckdb as duckdb_backend
import saedb.backends.filter_graphs as filter_graphs
from saedb.backends import connect
from saedb.backends.exact_index import STAMP_COLUMNS
from saedb.backends.paper_rows import PaperRows
from saedb.errors import OlderSchemaError
from saedb.loaders import load_corpus
from saedb.models import publish_model
from saedb.sae import SAE, cosine, unit_rows
from saedb.search import Steering, search
from tests.conftest import ASTRO, DATA, ML, assert_nearest_first, write_slice

ASTRO_DOCS, ML_DOCS = 1500, 700


def exact_top(unit: np.ndarray, doc_ids: np.ndarray, query: np.ndarray, limit: int, allowed: np.ndarray | None = None) -> list[int]:
    similarity = unit @ (query / np.linalg.norm(query))
    if allowed is not None:
        similarity = np.where(allowed, similarity, -np.inf)
    order = np.lexsort((doc_ids, -similarity))[:limit]
    return [int(d) for d in doc_ids[order] if allowed is None or allowed[doc_ids == d][0]]


def recall(found: list[int], truth: list[int]) -> float:
    return len(set(found) & set(truth)) / len(truth)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("approximate")
    return (write_slice(ASTRO, folder / "astro.jsonl.gz", ASTRO_DOCS), write_slice(ML, folder / "ml.jsonl.gz", ML_DOCS),
            write_slice(ASTRO, folder / "astro_more.jsonl.gz", ASTRO_DOCS + 200))


def load(path: str, corpora: tuple[Path, Path, Path]) -> int:
    """Both corpora with their MiniLM vectors, a random SAE published, the graph built; the model id."""
    with connect(path) as backend:
        load_corpus(backend, corpora[0], "minilm", embeddings=DATA / "hh_astro_minilm.parquet", progress=False)
        load_corpus(backend, corpora[1], "minilm", embeddings=DATA / "hh_ml_minilm.parquet", progress=False)
        model_id = publish_model(backend, SAE.random(384, 512, 16, seed=1), "approximate")
        backend.build_approximate_index()
        return model_id


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, corpora: tuple[Path, Path, Path]) -> tuple[str, int]:
    path = str(tmp_path_factory.mktemp("built") / "search.duckdb")
    return path, load(path, corpora)


def copy_of(built: tuple[str, int], target: Path) -> str:
    """The built database with its graph, copied (a second load of the corpora costs seconds)."""
    source = Path(built[0])
    for file in source.parent.glob(source.name + "*"):
        shutil.copy(file, target / file.name)
    return str(target / source.name)


def matrix_of(backend) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    ids, vectors = zip(*backend.iter_embeddings(100_000))
    unit = np.concatenate(vectors)
    return np.concatenate(ids), unit / np.linalg.norm(unit, axis=1, keepdims=True)


def queries_of(unit: np.ndarray, count: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    picked = unit[rng.choice(len(unit), count, replace=False)]
    return picked + rng.normal(0, 0.03, picked.shape).astype(np.float32)


def test_approximate_search_finds_what_exact_search_finds_and_exact_stays_exact(built: tuple[str, int]) -> None:
    path, model_id = built
    with connect(path) as backend:
        doc_ids, unit = matrix_of(backend)
        sae = backend.load_sae(model_id)
        plain, steered = [], []
        for i, query in enumerate(queries_of(unit)):
            feature = i * 7 % sae.n_latents
            assert_nearest_first([h.doc_id for h in search(backend, query, 10, exact=True)], doc_ids, unit, query, 10)
            plain.append(recall([h.doc_id for h in search(backend, query, 10)], exact_top(unit, doc_ids, query, 10)))
            steering = Steering("feature", feature, 0.5, model_id)
            truth = [h.doc_id for h in search(backend, query, 10, steering, exact=True)]
            assert_nearest_first(truth, doc_ids, unit, sae.steer_toward(query, feature, 0.5)[0], 10)
            steered.append(recall([h.doc_id for h in search(backend, query, 10, steering)], truth))
        assert backend.indexes.approximate.built
        assert np.mean(plain) >= 0.97 and np.mean(steered) >= 0.97, (np.mean(plain), np.mean(steered))


def test_a_query_steered_farther_is_searched_with_a_wider_beam(built: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Steering moves a query off the data, where a beam of EXPANSION_SEARCH loses recall (1M:
    0.976), the more the farther it turns: each steered search takes the beam its cosine to the
    query gives (STEERED_EXPANSION, read from bench_search's recall curve); plain ones keep theirs."""
    path, model_id = built
    with connect(path, read_only=True) as backend:
        graph = backend.indexes.approximate
        query = np.ones(384, np.float32)
        search(backend, query, 10)
        beams: list[int] = []
        run = approximate_index.Graph.walk
        monkeypatch.setattr(approximate_index.Graph, "walk", lambda self, query, count, expansion: beams.append(expansion)
                            or run(self, query, count, expansion))
        fractions = (0.05, 0.5, 0.9)
        search(backend, query, 10)
        for fraction in fractions:
            search(backend, query, 10, Steering("feature", 3, fraction, model_id))
        turned = [cosine(query, backend.load_sae(model_id).steer_toward(query, 3, f)[0]) for f in fractions]
        assert beams == [approximate_index.EXPANSION_SEARCH, *(approximate_index.steered_expansion(c) for c in turned)]
        assert beams[0] <= beams[1] < beams[2] < beams[3], (turned, beams)


def test_the_graph_is_saved_beside_the_file_and_opened_without_reading_vectors(built: tuple[str, int]) -> None:
    """A new process opens the graph memory-mapped: it answers a search without loading the
    embeddings (the exact index stays empty) and without changing the saved files."""
    path, _ = built
    meta = Path(path + ".hnsw.json")
    saved = json.loads(meta.read_text())
    assert Path(path).with_name(saved["file"]).exists()
    before = {p.name: p.stat().st_mtime_ns for p in Path(path).parent.iterdir()}
    script = (
        "import sys, numpy as np\n"
        "from saedb.backends import connect\n"
        "from saedb.search import search\n"
        "with connect(sys.argv[1], read_only=True) as b:\n"
        "    graph = b.indexes.approximate\n"
        "    assert graph.built and graph.mapped\n"
        "    vector = b.fetch_vectors('SELECT embedding FROM embeddings WHERE doc_id = 5')[0]\n"
        "    hits = search(b, vector, 3)\n"
        "    assert hits[0].doc_id == 5, hits\n"
        "    assert graph.mapped and len(b.indexes.exact.doc_ids) == 0\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in Path(path).parent.iterdir()} == before


def test_the_graph_follows_added_and_removed_rows(tmp_path: Path, corpora: tuple[Path, Path, Path], built: tuple[str, int]) -> None:
    path = copy_of(built, tmp_path)
    with connect(path) as backend, connect(path) as other:
        assert search(backend, np.ones(384, np.float32), 1)
        added = load_corpus(other, corpora[2], "minilm", embeddings=DATA / "hh_astro_minilm.parquet", progress=False).added
        assert added == 200
        newest = other.query("SELECT max(doc_id) FROM papers")[0][0]
        vector = other.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = ?", (newest,))[0]
        assert search(backend, vector, 1)[0].doc_id == newest
        gone = [newest, newest - 1, 3]
        other.execute(f"DELETE FROM embeddings WHERE doc_id IN ({', '.join(map(str, gone))})")
        found = {h.doc_id for q in (vector, *other.fetch_vectors("SELECT embedding FROM embeddings LIMIT 3")) for h in search(backend, q, 50)}
        assert not found & set(gone)
        assert tuple(json.loads(Path(path + ".hnsw.json").read_text())["stamp"]) == backend.embeddings_stamp()
        assert len(list(tmp_path.glob(Path(path).name + ".hnsw.*.faiss"))) == 1  # older graphs removed


def test_a_failed_save_answers_from_memory_and_keeps_the_previous_graph(tmp_path: Path, corpora: tuple[Path, Path, Path],
                                                                        built: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The database is the truth: a graph that could not be saved (a full disk) still answers,
    the files keep naming the previous, complete graph, and the next opening catches up."""
    path = copy_of(built, tmp_path)
    previous = json.loads(Path(path + ".hnsw.json").read_text())

    def no_space(*_: object) -> None:
        raise OSError(28, "No space left on device")

    with connect(path) as backend:
        monkeypatch.setattr(approximate_index.os, "replace", no_space)
        with pytest.warns(RuntimeWarning, match="No space left"):  # the load brings the graph up to date
            load_corpus(backend, corpora[2], "minilm", embeddings=DATA / "hh_astro_minilm.parquet", progress=False)
        newest = backend.query("SELECT max(doc_id) FROM papers")[0][0]
        vector = backend.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = ?", (newest,))[0]
        assert search(backend, vector, 1)[0].doc_id == newest
        monkeypatch.undo()
        assert json.loads(Path(path + ".hnsw.json").read_text()) == previous
        assert Path(path).with_name(previous["file"]).exists()
    with connect(path) as backend:
        assert backend.indexes.approximate.stamp == tuple(previous["stamp"])
        assert search(backend, vector, 1)[0].doc_id == newest
        assert tuple(json.loads(Path(path + ".hnsw.json").read_text())["stamp"]) == backend.embeddings_stamp()


@pytest.mark.parametrize("exact", [False, True], ids=["graph", "exact"])
def test_a_read_only_database_is_checked_by_its_first_search_only(tmp_path: Path, built: tuple[str, int], exact: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No process can write a file while it is open read-only (DuckDB's file lock), so there the
    embeddings' stamp is read once: the first search still sees rows removed after the graph was
    saved, and the searches after it read their papers without the change check."""
    path = copy_of(built, tmp_path)
    with connect(path) as writer:
        removed = 5
        vector = writer.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = ?", (removed,))[0]
        writer.execute("DELETE FROM embeddings WHERE doc_id = ?", (removed,))  # the saved graph still holds it
    with connect(path, read_only=True) as backend:
        statements: list[str] = []
        run = backend.query
        monkeypatch.setattr(backend, "query", lambda sql, params=(): statements.append(sql) or run(sql, params))
        assert removed not in [h.doc_id for h in search(backend, vector, 10, exact=exact)]
        assert any(STAMP_COLUMNS in sql for sql in statements)
        statements.clear()
        for _ in range(3):
            assert removed not in [h.doc_id for h in search(backend, vector, 10, exact=exact)]
        assert not any(STAMP_COLUMNS in sql for sql in statements), statements


@pytest.mark.parametrize("exact", [False, True], ids=["graph", "exact"])
def test_one_query_has_one_answer_whatever_the_index_went_through(tmp_path: Path, built: tuple[str, int], exact: bool) -> None:
    """A hit's distance comes from one kernel whichever path found it (the graph's walk, a
    filter's over-fetching or exact ranking, the in-memory exact index): the same query on the
    same rows gives bit-identical hits, after another connection removed, added and rewrote rows
    and put them back (the index re-synced: rows marked dead, appended, the graph rebuilt)."""
    path = copy_of(built, tmp_path)
    with connect(path) as backend, backend.sibling() as writer:
        doc_ids, unit = matrix_of(backend)
        queries = queries_of(unit, 3)
        first = [search(backend, query, 10, exact=exact) for query in queries]
        other_path = [search(backend, query, 10, exact=not exact) for query in queries]
        filtered = [search(backend, query, 10, corpus="ml", exact=exact) for query in queries]
        for hits, others in zip(first, other_path):  # the paths may differ in which rows they find, not in a row's distance
            distance = {hit.doc_id: hit.distance for hit in others}
            assert [hit.distance for hit in hits if hit.doc_id in distance] == [distance[hit.doc_id] for hit in hits if hit.doc_id in distance]
        hit_ids = sorted({hit.doc_id for hits in first + filtered for hit in hits})
        far = [int(d) for d in doc_ids if d not in hit_ids][::3]  # a third of the rows: marking them dead rebuilds the graph
        writer.execute("CREATE TEMP TABLE kept AS SELECT * FROM embeddings")
        marks = lambda ids: ", ".join(map(str, ids))  # noqa: E731
        changes = [
            (f"DELETE FROM embeddings WHERE doc_id = {hit_ids[0]}", f"INSERT INTO embeddings SELECT * FROM kept WHERE doc_id = {hit_ids[0]}"),
            (f"UPDATE embeddings SET embedding = (SELECT embedding FROM kept WHERE doc_id = {far[0]}), "
             f"embedding_hash = (SELECT embedding_hash FROM kept WHERE doc_id = {far[0]}) WHERE doc_id = {hit_ids[1]}",
             f"UPDATE embeddings SET embedding = k.embedding, embedding_hash = k.embedding_hash FROM kept k "
             f"WHERE embeddings.doc_id = k.doc_id AND k.doc_id = {hit_ids[1]}"),
            (f"DELETE FROM embeddings WHERE doc_id IN ({marks(far[:5])})", f"INSERT INTO embeddings SELECT * FROM kept WHERE doc_id IN ({marks(far[:5])})"),
            (f"DELETE FROM embeddings WHERE doc_id IN ({marks(far)})", f"INSERT INTO embeddings SELECT * FROM kept WHERE doc_id IN ({marks(far)})"),
        ]
        for attempt in range(20):
            change, undo = changes[attempt % len(changes)]
            writer.execute(change)
            searcher = writer if attempt % 2 else backend  # either connection brings the shared index up to date
            for query, hits in zip(queries, first):
                changed = search(searcher, query, 10, exact=exact)
                kept = {hit.doc_id: hit for hit in hits}
                assert [hit for hit in changed if hit.doc_id in kept and hit.doc_id not in hit_ids[:2]] == \
                    [kept[hit.doc_id] for hit in changed if hit.doc_id in kept and hit.doc_id not in hit_ids[:2]]
            writer.execute(undo)
            assert [search(backend, query, 10, exact=exact) for query in queries] == first, attempt
            assert [search(backend, query, 10, corpus="ml", exact=exact) for query in queries] == filtered, attempt


@pytest.mark.parametrize("exact", [False, True], ids=["graph", "exact"])
def test_a_snapshot_reads_the_stamp_once_and_answers_as_of_its_start(tmp_path: Path, built: tuple[str, int], exact: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A writable connection checks for changes and reads its hits' papers on every search;
    inside ``snapshot()`` (one read-only transaction) nothing can change what it sees, so its first
    search reads the stamp and every paper's row (with their own stamp) and the next ones run no
    SQL. Another connection of the process removing a row and renaming a paper meanwhile (its own
    search bringing the shared index up to date) changes nothing inside (the snapshot's next search
    brings the index back to what it sees); the next snapshot sees both. A write inside is refused and leaves the snapshot's answers as they were."""
    path = copy_of(built, tmp_path)
    with connect(path) as backend, backend.sibling() as writer:
        removed, renamed = 5, 6
        vector, of_renamed = backend.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id IN (?, ?) ORDER BY doc_id",
                                                   (removed, renamed))
        writer.execute("UPDATE papers SET title = 'before the snapshot' WHERE doc_id = ?", (renamed,))
        statements: list[str] = []
        for method in ("query", "arrow"):
            run = getattr(backend, method)
            monkeypatch.setattr(backend, method, lambda sql, params=(), run=run: statements.append(sql) or run(sql, params))
        title = lambda: search(backend, of_renamed, 1, exact=exact)[0].title  # noqa: E731
        with backend.snapshot():
            first = search(backend, vector, 10, exact=exact)
            assert first[0].doc_id == removed and title() == "before the snapshot"
            assert sum(STAMP_COLUMNS in sql for sql in statements) == 1, statements
            writer.execute("DELETE FROM embeddings WHERE doc_id = ?", (removed,))
            writer.execute("UPDATE papers SET title = 'during the snapshot' WHERE doc_id = ?", (renamed,))
            assert removed not in [h.doc_id for h in search(writer, vector, 10, exact=exact)]
            assert search(backend, vector, 10, exact=exact) == first  # the shared index was brought back to this snapshot
            statements.clear()
            for _ in range(3):
                assert search(backend, vector, 10, exact=exact) == first and title() == "before the snapshot"
            assert statements == []
            with pytest.raises(duckdb.TransactionException, match="read-only"):
                backend.execute("UPDATE papers SET title = 'written in a snapshot' WHERE doc_id = 7")
        with backend.snapshot():
            assert removed not in [h.doc_id for h in search(backend, vector, 10, exact=exact)]
            assert title() == "during the snapshot"
        assert backend.query("SELECT count(*) FROM papers WHERE title = 'written in a snapshot'") == [(0,)]


@pytest.mark.parametrize("exact", [False, True], ids=["graph", "exact"])
def test_a_read_only_database_reads_its_hits_papers_from_memory_once_loaded(built: tuple[str, int], exact: bool,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only (the file cannot change while open), the first search starts loading every
    paper's row in the background; once loaded, searches run no SQL at all and return exactly
    what a writable connection, reading the table, returns — filtered searches included."""
    path, _ = built
    with connect(path) as writer:
        doc_ids, unit = matrix_of(writer)
        queries = queries_of(unit, 12)
        expected = [search(writer, query, 10, exact=exact) for query in queries]
        expected_ml = [search(writer, query, 10, corpus="ml", exact=exact) for query in queries]
        assert all(len(hits) == 10 for hits in expected_ml)
        assert any({hit.doc_id for hit in hits} != {hit.doc_id for hit in plain} for hits, plain in zip(expected_ml, expected))
    with connect(path, read_only=True) as backend:
        assert search(backend, queries[0], 10, exact=exact) == expected[0]  # from DuckDB or memory, whichever is ready
        assert backend.indexes.papers is not None and backend.indexes.papers.ready.wait(120)
        statements: list[str] = []
        run, arrow = backend.query, backend.arrow
        monkeypatch.setattr(backend, "query", lambda sql, params=(): statements.append(sql) or run(sql, params))
        monkeypatch.setattr(backend, "arrow", lambda sql, params=(): statements.append(sql) or arrow(sql, params))
        assert [search(backend, query, 10, exact=exact) for query in queries] == expected
        assert not statements, statements
        assert [search(backend, query, 10, corpus="ml", exact=exact) for query in queries] == expected_ml


def test_closing_a_read_only_database_while_its_papers_load_stops_the_load(tmp_path: Path, built: tuple[str, int],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-search process (``saedb search``) closes while the papers are still loading: the
    load is interrupted, the close raises nothing, and the file opens again."""
    import saedb.backends.paper_rows as paper_rows

    path = copy_of(built, tmp_path)
    endless = "SELECT doc_id, arxiv_id, title, year FROM papers, range(1000000000000) ORDER BY doc_id"
    monkeypatch.setattr(paper_rows, "PAPER_ROWS_SQL", endless)  # a load that only an interrupt ends
    backend = connect(path, read_only=True)
    hits = search(backend, np.ones(384, np.float32), 10)
    papers = backend.indexes.papers
    assert papers is not None and not papers.ready.is_set()
    backend.close()
    assert not papers.ready.is_set() and isinstance(papers.failure, duckdb.InterruptException)
    monkeypatch.undo()
    with connect(path, read_only=True) as again:
        assert search(again, np.ones(384, np.float32), 10) == hits


def test_a_writable_database_reads_its_hits_papers_from_the_table(tmp_path: Path, built: tuple[str, int]) -> None:
    """A writable connection's papers can change between searches: each search reads them."""
    path = copy_of(built, tmp_path)
    with connect(path) as backend:
        vector = backend.fetch_vectors("SELECT embedding FROM embeddings WHERE doc_id = 5")[0]
        assert search(backend, vector, 3)[0].doc_id == 5
        backend.execute("UPDATE papers SET title = 'renamed between searches' WHERE doc_id = 5")
        assert search(backend, vector, 3)[0].title == "renamed between searches"
        assert backend.indexes.papers is None


@pytest.mark.parametrize("exact", [False, True], ids=["graph", "exact"])
def test_a_read_only_database_reads_a_filters_documents_once(built: tuple[str, int], exact: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only file cannot change while it is open, so a filter's documents are read by its
    first search only; later searches with it run no SQL for it, and answer as a writable
    connection (which reads them every time) does. Every paper's row is left unloaded (as on a
    machine where the background load has not finished yet): hits' papers then come from SQL, and
    that must not count as reading the filter again (on CI the load lost that race)."""
    path, _ = built
    monkeypatch.setattr(PaperRows, "start", lambda self: None)
    filters = [{"corpus": "ml"}, {"year_from": 2010}, {"corpus": "astro", "year_to": 2012}]
    with connect(path) as writable:
        queries = queries_of(matrix_of(writable)[1], 5)
        expected = [[h.doc_id for h in search(writable, q, 10, exact=exact, **options)] for options in filters for q in queries]
    with connect(path, read_only=True) as backend:
        statements: list[str] = []
        for method in ("query", "arrow"):
            run = getattr(type(backend), method)
            monkeypatch.setattr(type(backend), method, lambda self, sql, params=(), run=run: statements.append(sql) or run(self, sql, params))
        found = []
        for options in filters:
            for number, query in enumerate(queries):
                before = len(statements)
                found.append([h.doc_id for h in search(backend, query, 10, exact=exact, **options)])
                filter_reads = [sql for sql in statements[before:] if sql.startswith("SELECT doc_id FROM papers WHERE")]
                assert len(filter_reads) == (0 if number else 1), (options, filter_reads)
        assert found == expected


@pytest.mark.parametrize("row_us", [0.0, 1e9], ids=["exact-subset", "filtered-walk"])
def test_filters_keep_their_recall(built: tuple[str, int], row_us: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A corpus and a range of years: every hit matches, and recall against exact search within
    the filter holds, whether the filter's documents are ranked exactly or the walk checks them."""
    monkeypatch.setattr(approximate_index, "ROW_US", row_us)
    path, _ = built
    with connect(path) as backend:
        doc_ids, unit = matrix_of(backend)
        papers = {d: (c, y) for d, c, y in backend.query("SELECT doc_id, corpus, year FROM papers")}
        years = sorted(y for _, y in papers.values() if y is not None)
        middle = years[len(years) // 4], years[3 * len(years) // 4]
        filters = [({"corpus": "ml"}, lambda c, y: c == "ml"),
                   ({"year_from": middle[0], "year_to": middle[1]}, lambda c, y: y is not None and middle[0] <= y <= middle[1]),
                   ({"corpus": "astro", "year_from": middle[1]}, lambda c, y: c == "astro" and y is not None and y >= middle[1])]
        for options, matches in filters:
            allowed = np.array([matches(*papers[int(d)]) for d in doc_ids])
            scores = []
            for query in queries_of(unit, 20):
                hits = [h.doc_id for h in search(backend, query, 10, **options)]
                assert all(matches(*papers[d]) for d in hits), options
                truth = exact_top(unit, doc_ids, query, 10, allowed)
                assert_nearest_first([h.doc_id for h in search(backend, query, 10, exact=True, **options)], doc_ids, unit, query, 10, allowed)
                scores.append(recall(hits, truth))
            assert np.mean(scores) >= 0.95, (options, np.mean(scores))


def narrow_filter(backend) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
    """A filter allowing about a fifth of the test file's documents (ML papers from a year on),
    its mask by row, and the file's (doc ids, unit rows)."""
    doc_ids, unit = matrix_of(backend)
    papers = {d: (c, y) for d, c, y in backend.query("SELECT doc_id, corpus, year FROM papers")}
    years = sorted(y for c, y in papers.values() if c == "ml" and y is not None)
    since = years[len(years) // 2]
    allowed = np.array([papers[int(d)][0] == "ml" and (papers[int(d)][1] or 0) >= since for d in doc_ids])
    return {"corpus": "ml", "year_from": since}, allowed, doc_ids, unit


def test_a_narrow_kept_filter_walks_a_graph_of_its_own(built: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Over-fetching a filter allowing a share s of the documents walks about 1/s as far as a plain
    search. On a read-only instance a kept filter below GRAPH_BELOW_SHARE whose documents cost more
    to rank exactly than a plain walk gets an HNSW graph of its own in the background: once built
    (waited for on its event), its searches walk that graph only, every hit matches, recall holds."""
    monkeypatch.setattr(approximate_index, "ROW_US", 1e9)  # this file's filters are small: never rank them exactly
    path, _ = built
    with connect(path, read_only=True) as backend:
        options, allowed, doc_ids, unit = narrow_filter(backend)
        assert 0.05 < allowed.mean() < filter_graphs.GRAPH_BELOW_SHARE
        queries = queries_of(unit, 20)
        search(backend, queries[0], 10, **options)
        graph = backend.indexes.approximate
        assert graph.wait_for_filter_graphs(timeout=120)
        (kept,) = graph.current.filters.values()
        assert kept.graph is not None and kept.graph.ntotal == allowed.sum()
        walks: list[int] = []
        run = approximate_index.Graph.walk
        monkeypatch.setattr(approximate_index.Graph, "walk", lambda self, *args: walks.append(1) or run(self, *args))
        scores = []
        for query in queries:
            hits = [h.doc_id for h in search(backend, query, 10, **options)]
            assert all(allowed[doc_ids == d][0] for d in hits)
            scores.append(recall(hits, exact_top(unit, doc_ids, query, 10, allowed)))
        assert walks == [] and np.mean(scores) >= 0.97, (walks, np.mean(scores))


def test_filters_up_to_a_third_get_graphs_of_their_own_while_they_hold_fewer_rows_than_the_search_graph(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over-fetching costs about 1/s of a plain walk: a filter allowing a share s below a third of
    the documents qualifies (25% was 1.9-2.9x plain at 1M). Their graphs together hold at most as
    many rows as the search graph, or GRAPH_ROWS where that is more: the next filter over-fetches."""
    monkeypatch.setattr(filter_graphs, "GRAPH_ROWS", 100)
    live, rng = 1000, np.random.default_rng(0)
    vectors = unit_rows(rng.standard_normal((live, 16)).astype(np.float32))
    kept: list[filter_graphs.Allowed] = []
    for share in (0.3, 0.3, 0.3, 0.3):
        allowed = filter_graphs.Allowed(np.sort(rng.choice(live, int(share * live), replace=False)), live)
        allowed.plan_graph(live, kept, True, lambda positions: vectors[positions])
        kept.append(allowed)
    wide = filter_graphs.Allowed(np.arange(334), live)
    wide.plan_graph(live, [], True, lambda positions: vectors[positions])
    assert [allowed.planned for allowed in kept] == [True, True, True, False] and not wide.planned
    assert all(allowed.ready.wait(60) and allowed.graph.ntotal == 300 for allowed in kept[:3])


@pytest.mark.parametrize("case", ["writable", "over the row budget", "wide"])
def test_a_filter_that_does_not_qualify_over_fetches_on_the_whole_graph(built: tuple[str, int], case: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No graph of its own for a writable connection's filter (its documents may change between
    searches), beyond the row budget, or at GRAPH_BELOW_SHARE of the documents or more."""
    monkeypatch.setattr(approximate_index, "ROW_US", 1e9)
    if case == "over the row budget":
        monkeypatch.setattr(filter_graphs, "GRAPH_ROWS", 10)
        monkeypatch.setattr(filter_graphs, "GRAPH_ROWS_PER_SEARCH_ROW", 0.0)
    if case == "wide":
        monkeypatch.setattr(filter_graphs, "GRAPH_BELOW_SHARE", 0.05)
    path, _ = built
    with connect(path, read_only=case != "writable") as backend:
        options, allowed, doc_ids, unit = narrow_filter(backend)
        walks: list[int] = []
        run = approximate_index.Graph.walk
        monkeypatch.setattr(approximate_index.Graph, "walk", lambda self, *args: walks.append(1) or run(self, *args))
        for query in queries_of(unit, 3):
            hits = [h.doc_id for h in search(backend, query, 10, **options)]
            assert all(allowed[doc_ids == d][0] for d in hits)
        graph = backend.indexes.approximate
        assert graph.wait_for_filter_graphs(timeout=0)
        assert all(kept.graph is None and not kept.planned for kept in graph.current.filters.values())
        assert len(walks) >= 3


def test_a_load_builds_the_graph_from_the_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder) -> None:
    monkeypatch.setattr(duckdb_backend, "APPROXIMATE_FROM", 150)
    path = str(tmp_path / "threshold.duckdb")
    with connect(path) as backend:
        load_corpus(backend, write_slice(ASTRO, tmp_path / "a.jsonl.gz", 100), embedder, progress=False)
        assert not backend.indexes.approximate.built and not Path(path + ".hnsw.json").exists()
        load_corpus(backend, write_slice(ASTRO, tmp_path / "b.jsonl.gz", 200), embedder, progress=False)
        assert backend.indexes.approximate.built
        assert tuple(json.loads(Path(path + ".hnsw.json").read_text())["stamp"]) == backend.embeddings_stamp()


def test_a_graph_file_that_is_missing_or_unfinished_is_not_used(tmp_path: Path, embedder) -> None:
    path = str(tmp_path / "broken.duckdb")
    with connect(path) as backend:
        load_corpus(backend, write_slice(ASTRO, tmp_path / "a.jsonl.gz", 100), embedder, progress=False)
        backend.build_approximate_index()
    meta = Path(path + ".hnsw.json")
    Path(path).with_name(json.loads(meta.read_text())["file"]).unlink()
    with connect(path) as backend:
        assert not backend.indexes.approximate.built
        query = embedder.embed(["stars"])[0]
        assert [h.doc_id for h in search(backend, query, 5)] == [h.doc_id for h in search(backend, query, 5, exact=True)]
    os.remove(meta)


# Issue 35: a graph that does not belong to the database's current vectors never answers.

def indexed(path: str, corpus: Path, embeddings: Path) -> None:
    with connect(path) as backend:
        load_corpus(backend, corpus, "minilm", embeddings=embeddings, progress=False)
        backend.build_approximate_index()


def graph_file(path: str) -> Path:
    return Path(path).with_name(json.loads(Path(path + ".hnsw.json").read_text())["file"])


def answers_exactly(path: str, queries: np.ndarray) -> bool:
    with connect(path) as backend:
        return all([h.doc_id for h in search(backend, q, 10)] == [h.doc_id for h in search(backend, q, 10, exact=True)]
                   for q in queries)


def test_the_graph_of_another_database_is_never_used(tmp_path: Path, corpora: tuple[Path, Path, Path]) -> None:
    """Two databases numbered 1..N have the same doc-id stamp: Y's graph file copied over X's
    answered X's searches with Y's neighbours. The graph is bound to the files saedb wrote and,
    through the content hashes of the rows it holds, to the database's vectors."""
    x, y = str(tmp_path / "x.duckdb"), str(tmp_path / "y.duckdb")
    astro = write_slice(ASTRO, tmp_path / "astro.jsonl.gz", 300)
    ml = write_slice(ML, tmp_path / "ml.jsonl.gz", 300)
    indexed(x, astro, DATA / "hh_astro_minilm.parquet")
    indexed(y, ml, DATA / "hh_ml_minilm.parquet")
    with connect(x) as backend:
        queries = queries_of(matrix_of(backend)[1], 5)
    shutil.copy(graph_file(y), graph_file(x))  # the graph file alone
    with pytest.warns(RuntimeWarning, match="not the graph saedb wrote"):
        assert answers_exactly(x, queries)
    for file in tmp_path.glob("y.duckdb.hnsw*"):  # the graph with everything saedb writes beside it
        shutil.copy(file, tmp_path / file.name.replace("y.duckdb", "x.duckdb"))
    assert answers_exactly(x, queries)


def test_vectors_changed_in_place_never_give_a_stale_answer(tmp_path: Path, built: tuple[str, int]) -> None:
    """An UPDATE of embeddings from a plain client left the graph (and the in-memory exact copy)
    answering from the old vectors: the 10 rows moved away were still the answer. A change of a
    vector alone is refused by the table; a change that also rewrites its hash is seen by the
    next search."""
    path = copy_of(built, tmp_path)
    with connect(path) as backend:
        query = queries_of(matrix_of(backend)[1], 1)[0]
        nearest = [h.doc_id for h in search(backend, query, 10, exact=True)]
        assert recall([h.doc_id for h in search(backend, query, 10)], nearest) >= 0.8  # both indexes loaded in this process
        marks = ", ".join(map(str, nearest))
        plain = duckdb.connect(path)  # the same process's instance, as another client would use it
        with pytest.raises(duckdb.ConstraintException, match="embedding_hash"):
            plain.execute(f"UPDATE embeddings SET embedding = list_transform(embedding, lambda x: -x) WHERE doc_id IN ({marks})")
        plain.execute(f"UPDATE embeddings SET embedding = list_transform(embedding, lambda x: -x), "
                      f"embedding_hash = hash(list_transform(embedding, lambda x: -x)) WHERE doc_id IN ({marks})")
        plain.close()
        doc_ids, unit = matrix_of(backend)
        truth = exact_top(unit, doc_ids, query, 10)
        assert not set(truth) & set(nearest)
        assert_nearest_first([h.doc_id for h in search(backend, query, 10, exact=True)], doc_ids, unit, query, 10)
        found = [h.doc_id for h in search(backend, query, 10)]
        assert not set(found) & set(nearest) and recall(found, truth) >= 0.8
    with connect(path) as backend:  # and the saved graph, opened again
        found = [h.doc_id for h in search(backend, query, 10)]
        assert not set(found) & set(nearest) and recall(found, truth) >= 0.8


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_an_unreadable_graph_file_is_one_warning_and_exact_answers(tmp_path: Path, built: tuple[str, int], damage: str) -> None:
    """A truncated or overwritten graph file was a 110-line traceback (usearch's ValueError):
    now it is treated as a missing graph, named once, and `saedb index` rebuilds it."""
    from typer.testing import CliRunner

    from saedb.cli import app

    path = copy_of(built, tmp_path)
    target = graph_file(path)
    if damage == "truncated":
        os.truncate(target, 1000)
    else:
        target.write_bytes(np.random.default_rng(0).bytes(target.stat().st_size))
    with connect(path) as backend:
        queries = queries_of(matrix_of(backend)[1], 3)
    with pytest.warns(RuntimeWarning, match="saedb index"):
        assert answers_exactly(path, queries)
    result = CliRunner().invoke(app, ["search", "gamma-ray bursts", "--db", path])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert CliRunner().invoke(app, ["index", "--db", path]).exit_code == 0
    with connect(path) as backend:
        assert backend.indexes.approximate.built


def test_a_file_from_before_content_hashes_is_upgraded_once_and_read_only_opens_say_so(tmp_path: Path, built: tuple[str, int]) -> None:
    path = copy_of(built, tmp_path)
    plain = duckdb.connect(path)
    plain.execute("CREATE TABLE old_embeddings AS SELECT doc_id, embedding FROM embeddings")
    plain.execute("DROP TABLE embeddings")
    plain.execute("ALTER TABLE old_embeddings RENAME TO embeddings")
    plain.execute("UPDATE saedb_meta SET value = 'older' WHERE key = 'schema'")
    plain.close()
    with pytest.raises(OlderSchemaError, match="run `saedb upgrade` once"):
        connect(path, read_only=True)
    with connect(path) as backend:
        assert backend.query("SELECT count(*) FROM embeddings WHERE embedding_hash = hash(embedding)")[0][0] == ASTRO_DOCS + ML_DOCS
        assert backend.indexes.approximate.built  # the same hashes again: the graph still holds the table's rows
        query = queries_of(matrix_of(backend)[1], 1)[0]
        assert [h.doc_id for h in search(backend, query, 10)] == [h.doc_id for h in search(backend, query, 10, exact=True)]


def test_removed_rows_are_never_answers_and_many_of_them_rebuild_the_graph(tmp_path: Path, built: tuple[str, int]) -> None:
    """faiss's HNSW cannot unlink a vector: a removed row stays in the graph as a dead position
    the walk passes through but never returns, filtered or not; once dead rows are COMPACT_SHARE
    of the graph, the next change builds it again from the table, with no dead rows left."""
    path = copy_of(built, tmp_path)
    with connect(path) as backend:
        doc_ids, unit = matrix_of(backend)
        queries = queries_of(unit, 10)
        few = doc_ids[::20]
        backend.execute(f"DELETE FROM embeddings WHERE doc_id IN ({', '.join(map(str, few))})")
        for query in queries:
            assert not {h.doc_id for h in search(backend, query, 50)} & set(few.tolist())
            assert not {h.doc_id for h in search(backend, query, 50, corpus="astro")} & set(few.tolist())
        graph = backend.indexes.approximate.current
        assert len(graph.labels) == len(doc_ids) and (~graph.live).sum() == len(few)
        many = doc_ids[1::3]
        backend.execute(f"DELETE FROM embeddings WHERE doc_id IN ({', '.join(map(str, many))})")
        for query in queries:
            assert [h.doc_id for h in search(backend, query, 10)] == [h.doc_id for h in search(backend, query, 10, exact=True)] \
                or recall([h.doc_id for h in search(backend, query, 10)], [h.doc_id for h in search(backend, query, 10, exact=True)]) >= 0.9
        graph = backend.indexes.approximate.current
        assert graph.live.all() and len(graph.labels) == len(doc_ids) - len(np.union1d(few, many))
    with connect(path, read_only=True) as backend:  # and saved so
        assert backend.indexes.approximate.current.live.all()


def test_a_read_only_files_searches_take_no_lock(built: tuple[str, int]) -> None:
    """A read-only file's graph never changes in place, so its searches (the web app's parallel
    requests) do not wait on one another: none of them takes the index's lock."""
    class Refused:
        def __enter__(self) -> None:
            raise AssertionError("a read-only search took the graph's lock")

        def __exit__(self, *_: object) -> None:
            return None

    path, model_id = built
    with connect(path, read_only=True) as backend:
        search(backend, np.ones(384, np.float32), 10)  # the first search checks the file's stamp once
        backend.indexes.approximate.lock = Refused()
        assert search(backend, np.ones(384, np.float32), 10, Steering("feature", 3, 0.5, model_id))
        assert search(backend, np.ones(384, np.float32), 10, corpus="ml")


def test_a_graph_an_older_saedb_wrote_is_rebuilt_by_saedb_index(tmp_path: Path, built: tuple[str, int]) -> None:
    """An older saedb saved a usearch graph (format 2): it is named once, searches are exact,
    and `saedb index` replaces it (its files removed) with the graph this version reads."""
    from typer.testing import CliRunner

    from saedb.cli import app

    path = copy_of(built, tmp_path)
    meta = Path(path + ".hnsw.json")
    older = Path(path + ".hnsw.1.usearch")
    older.write_bytes(b"usearch graph")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 2, "file": older.name}))
    with connect(path) as backend:
        queries = queries_of(matrix_of(backend)[1], 3)
    with pytest.warns(RuntimeWarning, match="older saedb"):
        assert answers_exactly(path, queries)
    assert CliRunner().invoke(app, ["index", "--db", path]).exit_code == 0
    assert not older.exists() and graph_file(path).suffix == ".faiss"
    with connect(path) as backend:
        assert backend.indexes.approximate.built
