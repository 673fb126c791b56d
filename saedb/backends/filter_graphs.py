"""faiss's HNSW as saedb builds and walks it, and the graph of its own that a narrow filter gets.

Rules:
- One setting for every graph saedb builds: M = CONNECTIVITY, efConstruction = EXPANSION_ADD,
  inner product on unit vectors (= cosine).
- Over-fetching a filter that allows a share s of the documents costs about 1/s of a plain walk
  (bench_search at 1M, the runs in docs/benchmarks.md: 1.6-2.9x plain at 25%, 1.8-3.0x at 20%,
  3.0-4.7x at 10%; the 2% ranked exactly: 12.1-16.2x; 36% at 87k: 1.20-1.58x); on a graph of
  its own 0.5-1.5x.
  So a filter that is kept (a read-only instance's: its documents cannot change while the file
  is open), allows less than GRAPH_BELOW_SHARE of the documents and too many of them to rank
  exactly gets an HNSW graph of its own documents, built in the background from the search
  graph's vectors, one build at a time in a process (a build already uses every core). Until it
  is ready the filter over-fetches; once ready its searches walk it with the plain beam.
- The kept filters of one search graph hold at most as many rows in such graphs together as the
  search graph (so they at most double its memory: about 1.8 kB a row at 384-d), or GRAPH_ROWS
  where that is more: a filter beyond that over-fetches. A graph goes with its filter.
- ``ready`` is set once a build has ended (built, or failed: a warning, and the filter keeps
  over-fetching): what a caller waits on, never a sleep.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np

CONNECTIVITY = 32  # HNSW M
EXPANSION_ADD = 128  # efConstruction
GRAPH_BELOW_SHARE = 1 / 3  # over-fetching a quarter was 1.6-2.9x plain, 36% 1.20-1.58x
GRAPH_ROWS_PER_SEARCH_ROW = 1.0  # rows in filters' own graphs, per row of their search graph...
GRAPH_ROWS = 500_000  # ...or this many where that is more (about 0.9 GB at 384-d)
BUILDS = threading.Lock()  # one filter graph built at a time in a process


def new_index(dim: int) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(dim, CONNECTIVITY, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EXPANSION_ADD
    return index


def walked(index: Any, query: np.ndarray, count: int, expansion: int, selector: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The positions of about the ``count`` nearest of ``index`` (only those ``selector`` allows)
    with beam ``expansion``, and their cosine distances."""
    import faiss

    params = faiss.SearchParametersHNSW()
    params.efSearch = max(expansion, count)
    if selector is not None:
        params.sel = selector
    similarity, found = index.search(query[None, :], count, params=params)
    kept = found[0] >= 0
    return found[0][kept], 1.0 - similarity[0][kept]


@dataclass(eq=False)
class Allowed:
    """A filter's documents in one search graph: their sorted positions, as a mask by position,
    and (a kept, narrow filter's) an HNSW graph of their own, numbered as ``positions``."""

    positions: np.ndarray
    total: int  # the search graph's positions
    graph: Any = None  # faiss.IndexHNSWFlat once built
    planned: bool = False  # a build was started
    ready: threading.Event = field(default_factory=threading.Event)  # set once the build has ended

    @cached_property
    def mask(self) -> np.ndarray:
        mask = np.zeros(self.total, bool)
        mask[self.positions] = True
        return mask

    def plan_graph(self, live: int, kept: list[Allowed], exact_costs_more: bool, vectors: Callable[[np.ndarray], np.ndarray]) -> None:
        """Start building this filter's graph when it qualifies (see the rules): ``live`` rows in
        the search graph, ``kept`` its other kept filters, ``exact_costs_more``: ranking these
        documents exactly costs more than a plain walk; ``vectors(positions)`` reads their vectors."""
        count = len(self.positions)
        if self.planned or not exact_costs_more or count >= GRAPH_BELOW_SHARE * live:
            return
        budget = max(GRAPH_ROWS, GRAPH_ROWS_PER_SEARCH_ROW * live)
        if count + sum(len(other.positions) for other in kept if other.planned and other is not self) > budget:
            return
        self.planned = True
        threading.Thread(target=self._build, args=(vectors,), name="saedb-filter-graph", daemon=True).start()

    def _build(self, vectors: Callable[[np.ndarray], np.ndarray]) -> None:
        try:
            with BUILDS:
                rows = np.ascontiguousarray(vectors(self.positions), np.float32)
                index = new_index(rows.shape[1])
                index.add(rows)
                self.graph = index
        except (MemoryError, RuntimeError) as exc:
            warnings.warn(f"a filter's search graph was not built ({exc}): it keeps over-fetching", RuntimeWarning, stacklevel=1)
        finally:
            self.ready.set()

    def walk(self, query: np.ndarray, limit: int, expansion: int) -> tuple[np.ndarray, np.ndarray]:
        """The search graph's positions of about the ``limit`` nearest allowed rows, walked on
        this filter's own graph, and their cosine distances."""
        found, distances = walked(self.graph, query, min(limit, len(self.positions)), expansion)
        return self.positions[found], distances
