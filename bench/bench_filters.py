"""Filtered search on saedb's graph: its over-fetch (``ApproximateIndex.nearest`` with a subset)
against faiss's own filtered walk (``IDSelectorBitmap``, ef = C / share of the documents), on one
faiss HNSW graph of the astro-ph and ML MiniLM vectors, in one run. Recall@10 against exact
search within the filter; p50 per query. Why saedb over-fetches: the cross-corpus filter (ML
papers, asked with astro-ph questions) is where a filtered walk stops short. A filter narrow
enough to get a graph of its own (filter_graphs) is also timed on it, with its build time.

    python bench/bench_filters.py [--astro 87260] [--ml-share 0.1] [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_search import ms, over_fetching, own_graph_built, recall, timings  # noqa: E402
from bench.common import DATA  # noqa: E402
from saedb.backends.approximate_index import EXPANSION_SEARCH, ApproximateIndex, built_from  # noqa: E402
from saedb.sae import unit_rows  # noqa: E402

WALK_C = (30, 45, 90)  # faiss's filtered walk: ef = C / share (at least saedb's plain beam)


@dataclass
class Filter:
    """A fixed set of doc ids (positions of the corpus here), kept by the graph under its name as
    a read-only instance keeps a filter's documents."""

    name: str
    allowed: np.ndarray  # mask by doc id

    @property
    def key(self) -> tuple:
        return (self.name,)

    def ids(self) -> np.ndarray:
        return np.flatnonzero(self.allowed)


def vectors(name: str, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, arXiv ids) of ``rows`` papers of a corpus, drawn at random."""
    table = pq.read_table(DATA / f"{name}_minilm.parquet")
    chosen = np.sort(rng.permutation(table.num_rows)[:rows])
    matrix = np.stack(table.column("embedding").take(chosen).to_numpy(zero_copy_only=False)).astype(np.float32)
    return unit_rows(matrix), np.asarray(table.column("id").take(chosen).to_pylist())


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--astro", type=int, default=87_260, help="astro-ph papers (all: 87,260)")
    parser.add_argument("--ml-share", type=float, default=0.1, help="ML papers as a share of the corpus")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    astro, astro_ids = vectors("hh_astro", args.astro, rng)
    ml_rows = round(args.ml_share * args.astro / (1 - args.ml_share))
    ml, _ = vectors("hh_ml", ml_rows, rng)
    matrix = np.concatenate([astro, ml])
    is_ml = np.arange(len(matrix)) >= len(astro)
    oldest = np.zeros(len(matrix), bool)  # the astro-ph tenth with the smallest arXiv ids: the oldest papers
    oldest[np.argsort(astro_ids, kind="stable")[: len(astro) // 10]] = True
    doc_ids = np.arange(len(matrix), dtype=np.int64)
    started = time.perf_counter()
    index = ApproximateIndex(None, writable=False)
    index.current = built_from([(doc_ids, matrix, np.zeros(len(matrix), np.uint64))])
    print(f"{len(astro)} astro-ph + {len(ml)} ML papers; graph built in {time.perf_counter() - started:.1f} s")
    picks = rng.integers(0, len(matrix), args.queries)
    queries = unit_rows(matrix[picks] + rng.normal(0, 0.05, matrix[picks].shape).astype(np.float32))
    graph = index.current
    for subset in (Filter("corpus = ML (questions mostly astro-ph)", is_ml), Filter("corpus = astro-ph", ~is_ml),
                   Filter("oldest tenth of astro-ph", oldest), Filter("a random tenth", rng.random(len(matrix)) < 0.1)):
        share = subset.allowed.mean()
        allowed_ids = subset.ids()
        truth = [allowed_ids[np.argsort(-(matrix[allowed_ids] @ q))[:10]].tolist() for q in queries]
        searched = lambda q: index.nearest(q, 10, subset)[0].tolist()  # noqa: E731
        with over_fetching():
            seconds, found = timings(searched, list(queries))
        p50 = ms(seconds, 0.5)
        print(f"{subset.name} ({share:.0%}): saedb over-fetch p50 {p50:.2f} ms recall@10 {recall(found, truth):.3f}")
        built = own_graph_built(index, lambda: searched(queries[0]))
        if built is not None:
            seconds, found = timings(searched, list(queries))
            print(f"    saedb on the filter's own graph (built in {built:.1f} s): p50 {ms(seconds, 0.5):.2f} ms "
                  f"({ms(seconds, 0.5) / p50:.2f}x) recall@10 {recall(found, truth):.3f}")
        bits = np.packbits(subset.allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(matrix), faiss.swig_ptr(bits))
        for c in WALK_C:
            params = faiss.SearchParametersHNSW(efSearch=max(EXPANSION_SEARCH, round(c / share)), sel=selector)
            seconds, found = timings(lambda q: graph.index.search(q[None, :], 10, params=params)[1][0].tolist(), list(queries))
            walk_p50 = ms(seconds, 0.5)
            print(f"    faiss filtered walk ef {params.efSearch}: p50 {walk_p50:.2f} ms ({walk_p50 / p50:.2f}x) "
                  f"recall@10 {recall(found, truth):.3f}")


if __name__ == "__main__":
    main()
