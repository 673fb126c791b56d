"""Steered search speed and recall on both backends, against numpy exact search measured in
the same run (issue: fast search). The whole astro-ph corpus with its MiniLM vectors
(../shared/data; or embedded here by another embedder: ``bench_search.py hh_astro
wordllama-256``), a random SAE published over it, 100 random titles as queries (embedded by
the same embedder), single client:

1. numpy exact top-10 over the same matrix (baseline);
2. DuckDB ``saedb.search`` (in-process exact ranking) plain and steered: p50, p99, recall;
3. Postgres HNSW at several ``hnsw.ef_search`` values: p50, p99, recall, plain and steered;
4. Postgres with a filter (year >= 2015) and iterative index scans, recall against exact;
5. the peers (the `bench` extra): faiss IndexFlatIP, usearch exact, faiss and usearch HNSW.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_foundation import fresh_database  # noqa: E402
from bench.common import ROOT, report  # noqa: E402
from saedb.backends import Backend, connect  # noqa: E402
from saedb.embedders import get_embedder  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE  # noqa: E402
from saedb.search import Steering, search  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FILTERED_SQL = """
SELECT p.doc_id FROM embeddings e JOIN papers p ON p.doc_id = e.doc_id
WHERE p.year >= 2015 ORDER BY e.embedding <=> %s::vector LIMIT 10
"""


def timings(fn, queries) -> tuple[list[float], list]:
    out, seconds = [], []
    for q in queries:
        start = time.perf_counter()
        out.append(fn(q))
        seconds.append(time.perf_counter() - start)
    return seconds, out


def p(values: list[float], q: float) -> float:
    return float(np.quantile(values, q)) * 1000


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def measure(label: str, backend: Backend, model: int, queries: list, features: list[int], strength: float,
            truths: tuple[list, list], base: float, target_recall: float) -> None:
    """p50, p99 and recall@10 of plain and steered searches, against the exact results ``truths``."""
    for name, truth in zip(("plain", "steered"), truths):
        steer = name == "steered"
        seconds, hits = timings(lambda i: search(backend, queries[i], 10, Steering("feature", features[i], strength, model, "add") if steer else ()),
                                range(len(queries)))
        found = [[h.doc_id for h in hs] for hs in hits]
        report(f"{label} {name} p50", p(seconds, 0.5), "ms", base, "target <= 20 ms")
        report(f"{label} {name} p99", p(seconds, 0.99), "ms", base, "target <= 50 ms")
        report(f"{label} {name} recall@10 vs exact", recall(found, truth), "", None, f"target >= {target_recall:.2f}")


def peers(unit: np.ndarray, queries: list[np.ndarray], truth: list[list[int]], doc_ids: np.ndarray, base: float) -> None:
    """The libraries users would pick instead, on the same unit vectors and queries, one query at a
    time: faiss IndexFlatIP (exact), usearch exact, faiss HNSW and usearch HNSW at several search
    widths (build seconds, p50, p99, recall@10 against numpy exact, memory). Ratios: p50 over
    faiss IndexFlatIP's p50 and over numpy's."""
    import faiss
    from usearch.index import Index, MetricKind, search as usearch_exact

    unit = np.ascontiguousarray(unit, dtype=np.float32)
    unit_queries = [np.ascontiguousarray(q / np.linalg.norm(q), dtype=np.float32) for q in queries]
    position = {int(d): i for i, d in enumerate(doc_ids)}
    truth_rows = [[position[d] for d in t] for t in truth]

    def run(label: str, search_one, flat: float | None) -> float:
        seconds, found = timings(search_one, unit_queries)
        median = p(seconds, 0.5)
        ratio = f"  {median / flat:.2f}x faiss flat" if flat else ""
        print(f"{label:<44} p50 {median:7.2f} ms  p99 {p(seconds, 0.99):7.2f} ms  recall@10 {recall(found, truth_rows):.3f}  "
              f"{median / base:.2f}x numpy{ratio}", flush=True)
        return median

    flat = faiss.IndexFlatIP(unit.shape[1])
    flat.add(unit)
    flat_p50 = run("faiss IndexFlatIP (exact)", lambda q: flat.search(q[None], 10)[1][0].tolist(), None)
    run("usearch exact", lambda q: usearch_exact(unit, q, 10, MetricKind.IP, exact=True).keys.tolist(), flat_p50)
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(unit.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 128
    hnsw.add(unit)
    print(f"faiss HNSW (M=32, efConstruction 128) built in {time.perf_counter() - start:.1f} s", flush=True)
    for ef in (40, 100, 200):
        hnsw.hnsw.efSearch = ef
        run(f"faiss HNSW efSearch={ef}", lambda q: hnsw.search(q[None], 10)[1][0].tolist(), flat_p50)
    start = time.perf_counter()
    index = Index(ndim=unit.shape[1], metric=MetricKind.IP, dtype="f32", connectivity=16, expansion_add=128)
    index.add(np.arange(len(unit)), unit, threads=2)
    print(f"usearch HNSW (connectivity 16, expansion_add 128) built in {time.perf_counter() - start:.1f} s, "
          f"{index.memory_usage / 2**20:.0f} MB", flush=True)
    for ef in (40, 100, 200):
        index.expansion_search = ef
        run(f"usearch HNSW expansion_search={ef}", lambda q: index.search(q, 10).keys.tolist(), flat_p50)


def build(url: str, corpus: str, sae: SAE, embedder: str) -> tuple[Backend, int]:
    """The corpus with the reference MiniLM vectors from ../shared, or embedded here by ``embedder``."""
    backend = connect(url)
    vectors = DATA / f"{corpus}_minilm.parquet" if embedder == "minilm" else None
    load_corpus(backend, DATA / f"{corpus}.jsonl.gz", embedder, embeddings=vectors, batch_size=8192, progress=False)
    return backend, publish_model(backend, sae, "bench")


def main(corpus: str = "hh_astro", embedder: str = "minilm", n_queries: int = 100, strength: float = 0.6) -> None:
    sae = SAE.random(get_embedder(embedder).dim, 3072, 32, seed=3)
    with tempfile.TemporaryDirectory() as folder, local_postgres(Path(folder) / "pg") as server:
        duck, model = build(str(Path(folder) / "search.duckdb"), corpus, sae, embedder)
        ids, matrix = zip(*duck.iter_embeddings(65536))
        doc_ids, unit = np.concatenate(ids), np.concatenate(matrix)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        rng = random.Random(0)
        titles = [t for (t,) in duck.query("SELECT title FROM papers ORDER BY doc_id")]
        queries = list(get_embedder(embedder).embed(rng.sample(titles, n_queries)))  # embedded before the timed loops
        features = [rng.randrange(sae.n_latents) for _ in queries]
        steered = [sae.steer(q, f, strength)[0] for q, f in zip(queries, features)]

        def exact(q: np.ndarray) -> list[int]:
            sims = unit @ (q / np.linalg.norm(q))
            best = np.argpartition(-sims, 10)[:10]
            return doc_ids[best[np.argsort(-sims[best])]].tolist()

        base_s, exact_plain = timings(exact, queries)
        _, exact_steered = timings(exact, steered)
        base = p(base_s, 0.5)
        report(f"numpy exact top-10 over {len(doc_ids)} docs, p50 (baseline)", base, "ms")
        measure("DuckDB search", duck, model, queries, features, strength, (exact_plain, exact_steered), base, 1.0)
        duck.close()
        peers(unit, queries, exact_plain, doc_ids, base)
        pg, pg_model = build(fresh_database(server, "search_bench"), corpus, sae, embedder)
        for ef in (40, 100, 200):
            pg.execute(f"SET hnsw.ef_search = {ef}")
            measure(f"Postgres HNSW ef_search={ef}", pg, pg_model, queries, features, strength, (exact_plain, exact_steered), base, 0.95)
        years = dict(pg.query("SELECT doc_id, year FROM papers"))
        recent = np.array([years.get(int(d)) is not None and years[int(d)] >= 2015 for d in doc_ids])
        truth = []
        for q in queries:
            sims = np.where(recent, unit @ q, -np.inf)
            truth.append(doc_ids[np.argsort(-sims)[:10]].tolist())
        for scan in ("off", "relaxed_order"):
            pg.execute(f"SET hnsw.iterative_scan = {scan}")
            seconds, found = timings(lambda q: [r[0] for r in pg.conn.execute(FILTERED_SQL, (q,)).fetchall()], queries)
            report(f"Postgres year >= 2015, iterative_scan={scan} p50", p(seconds, 0.5), "ms", base)
            report(f"Postgres year >= 2015, iterative_scan={scan} recall@10", recall(found, truth), "", None, "target >= 0.95")
        pg.close()
        print("median of per-query p50 ratios is what matters here: both sides ran in this process, on the same cores")


if __name__ == "__main__":
    main(*sys.argv[1:3])  # [corpus] [embedder: minilm (the reference vectors) or one saedb runs, e.g. wordllama-256]
