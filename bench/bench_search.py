"""Search speed and recall, saedb beside the libraries users would pick instead, at 87k and at
1M documents, every figure measured in this run: p50 / p99 of single queries, recall@10
against exact search, build time and memory, and each p50 as a ratio to numpy's exact
top-10 and to faiss ``IndexFlatIP`` over the same unit vectors.

- 87k: the whole astro-ph corpus with its MiniLM vectors (../shared/data; or embedded here:
  ``--embedder wordllama-256``), 100 random titles as queries (embedded before the timed loops);
- 1M: bench_scale's synthetic corpus (real papers of both corpora repeated, their MiniLM
  vectors plus noise, sigma 0.02), 100 queries that are documents' vectors plus noise (0.05).

At each scale, a random SAE published over the corpus steers half the queries ("add" 0.6 of a
random feature), and:
1. numpy exact top-10 over the unit matrix (the baseline and the truth);
2. saedb on DuckDB through ``saedb.search``: the HNSW graph (built here, timed; start-up of a
   new process measured) and ``exact=True``, plain and steered; filters (corpus, years), each
   over-fetching on the whole graph, then (a narrow one) on the graph of its own it gets, with
   that graph's build time;
3. the peers on the same vectors: faiss IndexFlatIP, usearch exact, faiss HNSW (M=32,
   efConstruction 128: saedb's graph, built and searched directly: what saedb adds around it is
   the difference) and usearch HNSW (the same M and efConstruction), each at several ef;
4. Postgres + pgvector through ``saedb.search``: load, HNSW build with saedb's settings,
   ef_search 40 / 100 / 200, plain and steered, a year filter with iterative scans, and the
   same index over ``halfvec`` (half the memory) with its recall.

    python bench/bench_search.py [--scales 87k 1m] [--embedder minilm] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_foundation import fresh_database  # noqa: E402
from bench.common import ROOT  # noqa: E402
import saedb.backends.filter_graphs as filter_graphs  # noqa: E402
from saedb.backends import Backend, connect  # noqa: E402
from saedb.backends.approximate_index import (CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH,  # noqa: E402
                                              ApproximateIndex, steered_expansion)
from saedb.backends.duckdb import PAPERS_SQL, PAPERS_WITH_STAMP_SQL  # noqa: E402
from saedb.backends.exact_index import STAMP_SQL  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE, cosine, unit_rows  # noqa: E402
from saedb.search import Steering, search  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
STRENGTH = 0.6
VECTOR_SQL = "SELECT e.doc_id FROM embeddings e ORDER BY e.embedding <=> %s::vector LIMIT 10"
HALFVEC_SQL = """
SELECT e.doc_id FROM embeddings e ORDER BY e.embedding::halfvec({dim}) <=> %s::vector::halfvec({dim}) LIMIT 10
"""
YEAR_SQL = """
SELECT e.doc_id FROM embeddings e JOIN papers p ON p.doc_id = e.doc_id
WHERE p.year >= %s ORDER BY e.embedding <=> %s::vector LIMIT 10
"""


@dataclass
class Workload:
    """One scale's documents (unit rows, metadata) and queries, with the exact answers."""

    name: str
    doc_ids: np.ndarray
    unit: np.ndarray
    corpus: np.ndarray  # per row
    year: np.ndarray  # per row, -1 where unknown
    queries: list[np.ndarray]
    features: list[int]
    sae: SAE
    truth: dict[str, list[list[int]]] = field(default_factory=dict)  # plain / steered
    numpy_p50: float = 0.0
    flat_p50: float = 0.0

    def targets(self, kind: str) -> list[np.ndarray]:
        if kind == "plain":
            return self.queries
        return [self.sae.steer(q, f, STRENGTH)[0] for q, f in zip(self.queries, self.features)]

    def exact(self, query: np.ndarray, allowed: np.ndarray | None = None) -> list[int]:
        sims = self.unit @ (query / np.linalg.norm(query))
        if allowed is not None:
            sims = np.where(allowed, sims, -np.inf)
        best = np.argpartition(-sims, 10)[:10]
        return self.doc_ids[best[np.argsort(-sims[best])]].tolist()


def timings(fn: Callable, items: list) -> tuple[list[float], list]:
    """Each item's seconds and answer, timed after one untimed pass over them all (warm: a mapped
    graph's pages and every cache in)."""
    for item in items:
        fn(item)
    out, seconds = [], []
    for item in items:
        start = time.perf_counter()
        out.append(fn(item))
        seconds.append(time.perf_counter() - start)
    return seconds, out


def ms(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def line(work: Workload, label: str, seconds: list[float], found: list[list[int]] | None, truth: list[list[int]] | None,
         extra: str = "") -> None:
    p50 = ms(seconds, 0.5)
    rec = f"recall@10 {recall(found, truth):.3f}" if found is not None and truth is not None else " " * 15
    flat = f"{p50 / work.flat_p50:6.2f}x faiss flat" if work.flat_p50 else ""
    print(f"[{work.name}] {label:<52} p50 {p50:8.2f} ms  p99 {ms(seconds, 0.99):8.2f} ms  {rec}  "
          f"{p50 / work.numpy_p50:6.3f}x numpy  {flat}  {extra}", flush=True)


def baseline(work: Workload) -> None:
    """numpy exact top-10 (the truth of every recall), then faiss IndexFlatIP: both ratios' denominators."""
    import faiss

    seconds, work.truth["plain"] = timings(work.exact, work.queries)
    work.truth["steered"] = [work.exact(target) for target in work.targets("steered")]
    work.numpy_p50 = ms(seconds, 0.5)
    line(work, "numpy exact top-10 (baseline)", seconds, None, None)
    flat = faiss.IndexFlatIP(work.unit.shape[1])
    flat.add(work.unit)
    position = work.doc_ids
    seconds, found = timings(lambda q: position[flat.search(unit_query(q)[None], 10)[1][0]].tolist(), work.queries)
    work.flat_p50 = ms(seconds, 0.5)
    line(work, "faiss IndexFlatIP (exact)", seconds, found, work.truth["plain"])


def unit_query(q: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(q / np.linalg.norm(q), dtype=np.float32)


def timed_index_builds(backend: Backend, name: str) -> Backend:
    """``backend`` whose create_embeddings_index (called by the loader) prints its own wall time."""
    build = backend.create_embeddings_index

    def timed() -> None:
        started = time.perf_counter()
        build()
        print(f"[{name}] {type(backend).__name__}.create_embeddings_index at the end of a load: {time.perf_counter() - started:.1f} s", flush=True)

    backend.create_embeddings_index = timed  # type: ignore[method-assign]
    return backend


def saedb_duckdb(work: Workload, path: str, model: int) -> None:
    """saedb.search on DuckDB: the graph (built here unless the load did) on a writable
    connection, then read-only (as ``saedb serve`` opens it) the graph and exact=True; filters;
    start-up of a new process."""
    with connect(path) as duck:
        if not duck.indexes.approximate.built:
            started = time.perf_counter()
            duck.build_approximate_index()
            print(f"[{work.name}] saedb HNSW graph (faiss M={CONNECTIVITY}, efConstruction {EXPANSION_ADD}) built in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
        meta = duck.indexes.approximate.meta_path
        size = meta.with_name(json.loads(meta.read_text())["file"]).stat().st_size
        print(f"[{work.name}] saedb HNSW graph file (vectors included, memory-mapped when opened): {size / 2**20:.0f} MB", flush=True)
        seconds, hits = timings(lambda q: [h.doc_id for h in search(duck, q, 10)], work.queries)
        line(work, f"saedb DuckDB HNSW ef={EXPANSION_SEARCH} plain, writable (checks for changes)", seconds, hits, work.truth["plain"])
        with duck.snapshot():
            started = time.perf_counter()
            search(duck, work.queries[0], 10)
            first = time.perf_counter() - started
            seconds, hits = timings(lambda q: [h.doc_id for h in search(duck, q, 10)], work.queries)
        line(work, f"saedb DuckDB HNSW ef={EXPANSION_SEARCH} plain, writable in snapshot()", seconds, hits, work.truth["plain"],
             f"its first search (the stamp and every paper read) {first * 1000:.0f} ms")
    startup(work, path)
    with connect(path, read_only=True) as duck:
        started = time.perf_counter()
        duck.search_index()
        print(f"[{work.name}] saedb exact search's in-memory copy loaded in {time.perf_counter() - started:.1f} s "
              f"({duck.indexes.exact.unit_rows.nbytes / 2**20:.0f} MB)", flush=True)
        started = time.perf_counter()
        duck.prepare_search()  # read-only: every paper's row loads in the background, as in the web app; timed once loaded
        duck.indexes.papers.ready.wait()
        print(f"[{work.name}] saedb read-only: every paper's row loaded into memory in {time.perf_counter() - started:.1f} s "
              f"({duck.indexes.papers.nbytes / 2**20:.0f} MB)", flush=True)
        for exact in (False, True):
            for kind in ("plain", "steered"):
                steer = kind == "steered"
                seconds, hits = timings(lambda i: search(duck, work.queries[i], 10,
                                                         Steering("feature", work.features[i], STRENGTH, model, "add") if steer else (),
                                                         exact=exact), list(range(len(work.queries))))
                found = [[h.doc_id for h in hs] for hs in hits]
                differs = sum(f != t for f, t in zip(found, work.truth[kind]))
                beam = "per query" if steer else EXPANSION_SEARCH
                label = f"saedb DuckDB {'exact' if exact else f'HNSW ef={beam}'} {kind}"
                line(work, label, seconds, found, work.truth[kind], f"{differs} of {len(found)} differ from numpy" if exact else "")
        parts(work, duck)
        filters(work, duck)
        steered_recall_curve(work, duck.indexes.approximate)
        peers(work)


CURVE_FRACTIONS = (0.05, 0.15, 0.3, 0.5, 0.7)  # steer_toward steps, the web app's sliders
CURVE_EFS = (60, 80, 100, 150, 200, 300, 400, 600, 800, 1000, 1200)
CURVE_BANDS = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, -1.0)  # cosine to the query, at least (finer than saedb's table)
TARGET_RECALL = 0.99


def steered_recall_curve(work: Workload, graph: ApproximateIndex) -> None:
    """Recall@10 by ef of the plain queries (EXPANSION_SEARCH is the smallest ef at TARGET_RECALL),
    and of steered queries in bands of their cosine to the query they came from: the curve
    STEERED_EXPANSION is read from (the smallest ef at TARGET_RECALL or more in each band).
    Queries turned toward a random feature by steer_toward's steps, and moved by "add" 0.6."""
    plain = {ef: [graph.nearest(q, 10, expansion=ef)[0].tolist() for q in work.queries] for ef in CURVE_EFS}
    cells = "  ".join(f"ef {ef} {recall(plain[ef], work.truth['plain']):.3f}" for ef in CURVE_EFS)
    print(f"[{work.name}] plain recall@10 by ef: {cells};  saedb uses ef {EXPANSION_SEARCH}", flush=True)
    targets = [(q, t) for q, f in zip(work.queries, work.features)
               for t in (*(work.sae.steer_toward(q, f, fraction)[0] for fraction in CURVE_FRACTIONS), work.sae.steer(q, f, STRENGTH)[0])]
    cosines = np.array([cosine(q, t) for q, t in targets])
    truth = [work.exact(t) for _, t in targets]
    band = np.array([next(i for i, least in enumerate(CURVE_BANDS) if c >= least) for c in cosines])
    found: dict[int, list[list[int]]] = {}
    seconds: dict[int, list[float]] = {}
    for ef in CURVE_EFS:
        seconds[ef], found[ef] = timings(lambda t: graph.nearest(t, 10, expansion=ef)[0].tolist(), [t for _, t in targets])
    for number, least in enumerate(CURVE_BANDS):
        rows = np.flatnonzero(band == number)
        if not len(rows):
            continue
        scores = {ef: recall([found[ef][i] for i in rows], [truth[i] for i in rows]) for ef in CURVE_EFS}
        enough = next((ef for ef in CURVE_EFS if scores[ef] >= TARGET_RECALL), None)
        cells = "  ".join(f"ef {ef} {scores[ef]:.3f} ({ms([seconds[ef][i] for i in rows], 0.5):.2f} ms)" for ef in CURVE_EFS)
        print(f"[{work.name}] steered recall@10, cosine to the query >= {least:5.2f} ({len(rows):3} queries): {cells};  "
              f"smallest ef at {TARGET_RECALL}: {enough}; saedb uses ef {steered_expansion(least)}", flush=True)
    chosen = [found[steered_expansion(c)][i] for i, c in enumerate(cosines)]
    print(f"[{work.name}] steered recall@10 with the beam chosen per query: {recall(chosen, truth):.3f} "
          f"over {len(targets)} queries (cosines {cosines.min():.2f}-{cosines.max():.2f})", flush=True)


def parts(work: Workload, duck: Backend) -> None:
    """Where a plain search's time goes: the graph through saedb's index, then the 10 papers
    (read-only, as here: the file cannot change while open, so no change check, and the papers
    come from memory once loaded); a writable connection reads them with the table's stamp."""
    graph = duck.indexes.approximate
    seconds, found = timings(lambda q: graph.nearest(q, 10)[0].tolist(), work.queries)
    line(work, "  of which saedb's index alone (ApproximateIndex.nearest)", seconds, found, work.truth["plain"])
    current = graph.current
    walked = [(q, current.walk(unit_rows(q[None, :])[0], 10, EXPANSION_SEARCH)[0]) for q in work.queries]
    seconds, _ = timings(lambda pair: current.scored(pair[0], pair[1], 10), walked)
    line(work, "    of which the one kernel scoring the 10 hits (Graph.scored: one answer whichever path)", seconds, None, None)
    marks = lambda ids: ", ".join("?" * len(ids))  # noqa: E731
    seconds, _ = timings(lambda ids: duck.indexes.papers.rows_of(np.array(ids)), work.truth["plain"])
    line(work, "  of which the 10 papers from memory (read-only, once loaded)", seconds, None, None)
    seconds, _ = timings(lambda ids: duck.query(PAPERS_SQL.format(marks=marks(ids)), ids), work.truth["plain"])
    line(work, "    before they are loaded: the 10 papers by id from DuckDB", seconds, None, None)
    seconds, _ = timings(lambda ids: duck.query(PAPERS_WITH_STAMP_SQL.format(marks=marks(ids)), ids), work.truth["plain"])
    line(work, "    a writable connection's: the papers and the change check, one statement", seconds, None, None)
    seconds, _ = timings(lambda q: duck.query(STAMP_SQL), work.queries)
    line(work, "    the change check alone (count, max, sum of doc ids)", seconds, None, None)


def startup(work: Workload, path: str) -> None:
    """A new process: from connect() to the first search's answer (the graph is memory-mapped)."""
    script = ("import sys, time, numpy as np\nstarted = time.perf_counter()\nfrom saedb.backends import connect\n"
              "from saedb.search import search\nimported = time.perf_counter()\nwith connect(sys.argv[1], read_only=True) as b:\n"
              "    search(b, np.ones(int(sys.argv[2]), np.float32), 10)\n    print(imported - started, time.perf_counter() - imported)\n")
    done = subprocess.run([sys.executable, "-c", script, path, str(work.unit.shape[1])], capture_output=True, text=True, check=True)
    imports, answer = (float(v) for v in done.stdout.split())
    print(f"[{work.name}] saedb DuckDB start-up in a new process: connect to first answer {answer:.2f} s (target <= 2 s), "
          f"after {imports:.2f} s of imports", flush=True)


@contextmanager
def over_fetching() -> Iterator[None]:
    """Filters over-fetch on the whole graph inside (none gets a graph of its own), as before one is built."""
    budget = filter_graphs.GRAPH_ROWS, filter_graphs.GRAPH_ROWS_PER_SEARCH_ROW
    filter_graphs.GRAPH_ROWS, filter_graphs.GRAPH_ROWS_PER_SEARCH_ROW = 0, 0.0
    try:
        yield
    finally:
        filter_graphs.GRAPH_ROWS, filter_graphs.GRAPH_ROWS_PER_SEARCH_ROW = budget


def own_graph_built(index: ApproximateIndex, first_search: Callable[[], object]) -> float | None:
    """Seconds from ``first_search`` to the graph of its own its filter gets being ready (None: it gets none)."""
    started = time.perf_counter()
    first_search()
    index.wait_for_filter_graphs()
    assert index.current is not None
    kept = next(reversed(index.current.filters.values()))  # the filter searched last
    return time.perf_counter() - started if kept.graph is not None else None


def filters(work: Workload, duck: Backend) -> None:
    """Filtered searches' speed and recall against exact search within the same filter: over-fetching,
    then, for a filter narrow enough to get one, on its own graph (built in the background)."""
    years = work.year[work.year >= 0]
    recent = int(np.quantile(years, 0.75)) if len(years) else 0
    early = int(np.quantile(years, 0.02)) if len(years) else 0  # the narrow end: a few percent of the documents
    names, counts = np.unique(work.corpus, return_counts=True)
    corpus = str(names[np.argmin(counts)])
    for label, options, allowed in (
        (f"corpus = {corpus}", {"corpus": corpus}, work.corpus == corpus),
        (f"year >= {recent}", {"year_from": recent}, work.year >= recent),
        (f"year = {recent}", {"year_from": recent, "year_to": recent}, work.year == recent),
        (f"year <= {early}", {"year_to": early}, (work.year >= 0) & (work.year <= early)),
    ):
        truth = [work.exact(q, allowed) for q in work.queries]
        searched = lambda q: [h.doc_id for h in search(duck, q, 10, **options)]  # noqa: E731
        with over_fetching():
            seconds, hits = timings(searched, work.queries)
        line(work, f"saedb DuckDB HNSW {label} ({allowed.mean():.0%} of docs)", seconds, hits, truth)
        built = own_graph_built(duck.indexes.approximate, lambda: searched(work.queries[0]))
        if built is not None:
            seconds, hits = timings(searched, work.queries)
            line(work, "  the same on the filter's own graph", seconds, hits, truth, f"built in the background in {built:.1f} s")


def peers(work: Workload) -> None:
    """The libraries alone on the same unit vectors: exact, then faiss's HNSW (saedb's graph,
    built here with saedb's settings: the build time saedb's is compared with) and usearch's."""
    import faiss
    from usearch.index import Index, MetricKind, search as usearch_exact

    queries = [unit_query(q) for q in work.queries]
    ids = work.doc_ids
    seconds, found = timings(lambda q: ids[usearch_exact(work.unit, q, 10, MetricKind.IP, exact=True).keys].tolist(), queries)
    line(work, "usearch exact", seconds, found, work.truth["plain"])
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(work.unit.shape[1], CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = EXPANSION_ADD
    hnsw.add(work.unit)
    print(f"[{work.name}] faiss HNSW (M={CONNECTIVITY}, efConstruction {EXPANSION_ADD}) built in {time.perf_counter() - started:.1f} s", flush=True)
    for ef in (40, 100, 200):
        hnsw.hnsw.efSearch = ef
        seconds, found = timings(lambda q: ids[hnsw.search(q[None], 10)[1][0]].tolist(), queries)
        line(work, f"faiss HNSW efSearch={ef}", seconds, found, work.truth["plain"])
    started = time.perf_counter()
    graph = Index(ndim=work.unit.shape[1], metric=MetricKind.IP, dtype="f32", connectivity=CONNECTIVITY, expansion_add=EXPANSION_ADD)
    graph.add(np.arange(len(ids)), work.unit, threads=0)
    print(f"[{work.name}] usearch HNSW (M={CONNECTIVITY}, expansion_add {EXPANSION_ADD}) built in {time.perf_counter() - started:.1f} s", flush=True)
    for ef in (40, 100, 200):
        graph.expansion_search = ef
        seconds, found = timings(lambda q: ids[graph.search(q, 10).keys.astype(np.int64)].tolist(), queries)
        line(work, f"usearch HNSW ef={ef}", seconds, found, work.truth["plain"])


def postgres(work: Workload, url: str, load: Callable[[Backend], None]) -> None:
    """Load and index with saedb's defaults, then ef_search 40 / 100 / 200; halfvec beside."""
    with connect(url) as pg:
        notices: list[str] = []
        pg.conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        started = time.perf_counter()
        load(timed_index_builds(pg, work.name))  # saedb's loader builds the HNSW index at the end
        size = pg.query("SELECT pg_relation_size('embeddings_hnsw')")[0][0] / 2**20
        print(f"[{work.name}] Postgres load with its HNSW build: {time.perf_counter() - started:.1f} s; index {size:.0f} MB; "
              f"pgvector said: {'; '.join(sorted(set(notices))) or 'nothing'}", flush=True)
        model = publish_model(pg, work.sae, "bench")
        for ef in (40, 100, 200):
            pg.execute(f"SET hnsw.ef_search = {ef}")
            for kind in ("plain", "steered"):
                steer = kind == "steered"
                seconds, hits = timings(lambda i: search(pg, work.queries[i], 10,
                                                         Steering("feature", work.features[i], STRENGTH, model, "add") if steer else ()),
                                        list(range(len(work.queries))))
                line(work, f"Postgres HNSW ef_search={ef} {kind}", seconds, [[h.doc_id for h in hs] for hs in hits], work.truth[kind])
            seconds, found = timings(lambda q: [r[0] for r in pg.conn.execute(VECTOR_SQL, (q,)).fetchall()], work.queries)
            line(work, f"Postgres HNSW ef_search={ef} plain (SQL, as halfvec below)", seconds, found, work.truth["plain"])
        recent = int(np.quantile(work.year[work.year >= 0], 0.75))
        truth = [work.exact(q, work.year >= recent) for q in work.queries]
        pg.execute("SET hnsw.ef_search = 100")
        seconds, found = timings(lambda q: [r[0] for r in pg.conn.execute(YEAR_SQL, (recent, q)).fetchall()], work.queries)
        line(work, f"Postgres HNSW ef=100 year >= {recent} (iterative scan)", seconds, found, truth)
        dim = work.unit.shape[1]
        started = time.perf_counter()
        with pg.transaction():
            pg.execute(f"SET LOCAL maintenance_work_mem = '{max(64, len(work.unit) * (2 * dim + 600) * 2 // 2**20)}MB'")
            pg.execute(f"CREATE INDEX embeddings_halfvec ON embeddings USING hnsw ((embedding::halfvec({dim})) halfvec_cosine_ops)")
        size = pg.query("SELECT pg_relation_size('embeddings_halfvec')")[0][0] / 2**20
        print(f"[{work.name}] Postgres halfvec HNSW built in {time.perf_counter() - started:.1f} s, {size:.0f} MB", flush=True)
        for ef in (40, 100, 200):
            pg.execute(f"SET hnsw.ef_search = {ef}")
            seconds, found = timings(lambda q: [r[0] for r in pg.conn.execute(HALFVEC_SQL.format(dim=dim), (q,)).fetchall()], work.queries)
            line(work, f"Postgres halfvec HNSW ef_search={ef} plain (SQL)", seconds, found, work.truth["plain"])


def matrix(backend: Backend) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids, vectors = zip(*backend.iter_embeddings(65536))
    doc_ids, unit = np.concatenate(ids), np.concatenate(vectors)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    meta = {d: (c, -1 if y is None else y) for d, c, y in backend.query("SELECT doc_id, corpus, year FROM papers")}
    return doc_ids, unit, np.array([meta[int(d)][0] for d in doc_ids]), np.array([meta[int(d)][1] for d in doc_ids])


def astro(folder: Path, embedder: str) -> tuple[Workload, str, Callable[[Backend], None]]:
    from saedb.embedders import get_embedder

    vectors = DATA / "hh_astro_minilm.parquet" if embedder == "minilm" else None

    def load(backend: Backend) -> None:
        load_corpus(backend, DATA / "hh_astro.jsonl.gz", embedder, embeddings=vectors, batch_size=8192, progress=False)

    path = str(folder / "astro.duckdb")
    with connect(path) as duck:
        load(duck)
        doc_ids, unit, corpus, year = matrix(duck)
        titles = [t for (t,) in duck.query("SELECT title FROM papers ORDER BY doc_id")]
        rng = random.Random(0)
        queries = list(get_embedder(embedder).embed(rng.sample(titles, 100)))
        sae = SAE.random(unit.shape[1], 3072, 32, seed=3)
        features = [rng.randrange(sae.n_latents) for _ in queries]
        model = publish_model(duck, sae, "bench")
    assert model == 1
    return Workload("87k", doc_ids, unit, corpus, year, queries, features, sae), path, load


def million(folder: Path, docs: int = 1_000_000) -> tuple[Workload, str, Callable[[Backend], None]]:
    from bench.bench_scale import EMBEDDER, make_corpus

    make_corpus(folder / "corpus", docs)

    def load(backend: Backend) -> None:
        for part in ("corpus", "new"):
            load_corpus(backend, folder / "corpus" / f"{part}.jsonl.gz", EMBEDDER, embeddings=folder / "corpus" / f"{part}.parquet",
                        batch_size=8192, progress=False)

    path = str(folder / "million.duckdb")
    with connect(path) as duck:
        started = time.perf_counter()
        load(timed_index_builds(duck, str(docs)))  # 90%: the graph is built; 10% more: the graph is brought up to date
        print(f"[{docs}] DuckDB load of {docs} documents, in two parts, graph included: {time.perf_counter() - started:.1f} s", flush=True)
        doc_ids, unit, corpus, year = matrix(duck)
        rng = np.random.default_rng(0)
        rows = rng.integers(0, len(unit), 100)
        queries = [q / np.linalg.norm(q) for q in unit[rows] + rng.normal(0, 0.05, (100, unit.shape[1])).astype(np.float32)]
        sae = SAE.random(unit.shape[1], 3072, 8, seed=3)  # k=8: fewer code rows to write; search reads only the decoder
        features = [int(f) for f in rng.integers(0, sae.n_latents, 100)]
        model = publish_model(duck, sae, "bench")
    assert model == 1
    return Workload("1M" if docs == 1_000_000 else f"{docs}", doc_ids, unit, corpus, year, queries, features, sae), path, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="+", choices=("87k", "1m"), default=["87k", "1m"])
    parser.add_argument("--embedder", default="minilm", help="87k: the reference MiniLM vectors, or an embedder saedb runs")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--docs", type=int, default=1_000_000, help="documents of the '1m' scale (fewer: a quick check of this script)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, local_postgres(Path(folder) / "pg") as server:
        for scale in args.scales:
            work, path, load = astro(Path(folder), args.embedder) if scale == "87k" else million(Path(folder), args.docs)
            baseline(work)
            saedb_duckdb(work, path, 1)
            if not args.no_postgres:
                postgres(work, fresh_database(server, f"search_{scale}"), load)
            Path(path).unlink()
    print("every ratio divides by a p50 measured in this run, on the same cores and queries")


if __name__ == "__main__":
    main()
