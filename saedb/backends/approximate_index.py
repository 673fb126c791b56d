"""Approximate nearest neighbours for the embedded default: an HNSW graph (usearch) over a
DuckDB database's own embeddings, saved beside the file.

Rules:
- Built from the database's vectors, unit-normalised (inner product = cosine), only when asked
  (``saedb index``, or a load that leaves at least APPROXIMATE_FROM embeddings): never by a search.
- Saved as ``<file>.hnsw.<n>.usearch`` and named, with the stamp (count, max, sum of doc ids)
  of the rows it holds, by ``<file>.hnsw.json``, which is replaced atomically after the graph is
  written: a crash leaves the previous pair. Opened memory-mapped (``view``): start-up reads no vectors.
- Kept in step: each search reads the table's stamp in the statement that reads its papers
  (on a read-only instance the stamp is read once: the file cannot change while it is open)
  and compares it with the graph's; on a difference the doc ids are compared, rows gone are
  removed and new rows added (on an in-memory copy of a mapped graph), the result is saved
  where the database is writable, and the search is done again.
- A filter (``Subset``) over-fetches: candidates are asked for in proportion to the share of
  documents it allows and checked against it; a filter so narrow that reading its documents
  costs less than those candidates ranks them exactly (their vectors read from the database).
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from saedb.backends.exact_index import LOAD_BLOCK, Stamp, ranked, read_unit_rows
from saedb.sae import unit_rows

# Measured by bench_search.py (README, "Beside the libraries"): exact search costs ~17 ms at 87k
# documents and ~100 ms at 1M; the graph answers in ~1 ms at either. At 87k real MiniLM queries,
# M=16 reached recall@10 0.984 at ef 100 and M=32 0.992 (0.86 ms), for 1.4x the build time.
APPROXIMATE_FROM = 100_000  # embeddings from which a load builds the graph (below: exact, about 20 ms or less)
CONNECTIVITY = 32  # HNSW M
EXPANSION_ADD = 128  # efConstruction
EXPANSION_SEARCH = 100  # ef at search (at least the number of candidates asked for)
# A steered query lies off the data, where the beam above loses recall: at 1M (bench_search's
# corpus, 100 queries steered by random features) recall@10 0.976 at ef 100, 0.986 at 150
# (+0.5 ms), 0.988 at 200, 0.997 at 300. Steered searches use a wider beam.
STEERED_EXPANSION = 150
# A filter over-fetches: OVERFETCH candidates per allowed hit expected (limit / share), searched
# with ef EF_PER_CANDIDATE times that. On bench_search's 1M corpus (40 queries): 2 and 1 gave recall@10
# 0.95 / 0.93 for a 10% corpus and a 25% range of years; 4 and 2 gave 0.99 / 0.99.
OVERFETCH, EF_PER_CANDIDATE = 4.0, 2
# It ranks the allowed documents exactly instead when reading them costs less than that search:
# about 2 µs per row read from DuckDB against 15 µs per unit of ef (1M, bench_search).
ROW_READ_US, EF_US = 2.0, 15.0
BUILD_THREADS = 0  # usearch's default: every core
FORMAT = 1  # of the .json naming the graph


class Subset(Protocol):
    """The documents a filtered search may return."""

    def count(self) -> int:
        """How many documents it allows."""

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Their doc ids and embeddings."""

    def keep(self, candidates: np.ndarray) -> np.ndarray:
        """A boolean mask over ``candidates``: True where the doc id is allowed."""


def stamp_of(keys: np.ndarray) -> Stamp:
    return (len(keys), int(keys.max()) if len(keys) else 0, int(keys.sum()) if len(keys) else 0)


class ApproximateIndex:
    """The HNSW graph of one database file's embeddings (``<file>.<schema>`` for a workspace's;
    None: an in-memory database's, never saved)."""

    def __init__(self, database: Path | None, writable: bool) -> None:
        self.meta_path = None if database is None else database.with_name(database.name + ".hnsw.json")
        self.writable = writable and database is not None
        self.lock = threading.Lock()
        self.graph = None  # usearch.index.Index
        self.mapped = False  # the graph is the saved file, memory-mapped (read-only) until first changed
        self.stamp: Stamp | None = None
        self._open()

    @property
    def built(self) -> bool:
        return self.graph is not None

    def _open(self) -> None:
        """The saved graph, when its .json names a file that is there; else none."""
        if self.meta_path is None or not self.meta_path.exists():
            return
        from usearch.index import Index

        meta = json.loads(self.meta_path.read_text())
        path = self.meta_path.with_name(meta["file"])
        if meta.get("format") != FORMAT or not path.exists():
            return
        self.graph, self.mapped = Index.restore(str(path), view=True), True
        self.stamp = tuple(meta["stamp"])  # type: ignore[assignment]

    def build(self, span: tuple[int, int, int], read_range: Callable[[int, int], tuple[np.ndarray, np.ndarray]]) -> None:
        """A new graph of every embedding (``span``: first doc id, last, count), read LOAD_BLOCK ids at a time."""
        from usearch.index import Index, MetricKind

        low, high, _ = span
        graph = None
        for start in range(low, high + 1, LOAD_BLOCK):
            ids, rows = read_unit_rows(read_range, start, min(start + LOAD_BLOCK, high + 1) - 1, 0)
            if not len(ids):
                continue
            if graph is None:
                graph = Index(ndim=rows.shape[1], metric=MetricKind.IP, dtype="f32", connectivity=CONNECTIVITY,
                              expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
            graph.add(ids, rows, threads=BUILD_THREADS)
        with self.lock:
            self._install(graph)

    def sync(self, stamp: Stamp, all_ids: Callable[[], np.ndarray],
             rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
        """Bring the graph to the table whose stamp is ``stamp``: ``all_ids()`` gives its doc ids,
        ``rows(ids)`` the (doc ids, vectors) of some of them."""
        with self.lock:
            if self.graph is None or stamp == self.stamp:
                return
            held = np.asarray(self.graph.keys, dtype=np.int64)
            present = np.asarray(all_ids(), dtype=np.int64)
            gone, new = np.setdiff1d(held, present), np.setdiff1d(present, held)
            graph = self.graph.copy() if self.mapped else self.graph  # a mapped graph cannot change
            if len(gone):
                graph.remove(gone.astype(np.uint64))
            for start in range(0, len(new), LOAD_BLOCK):
                ids, vectors = rows(new[start : start + LOAD_BLOCK])
                if len(ids):
                    graph.add(ids, unit_rows(np.asarray(vectors, np.float32)), threads=BUILD_THREADS)
            self._install(graph)

    def _install(self, graph) -> None:  # noqa: ANN001 - usearch.index.Index
        """Use ``graph`` (None: no rows) from now on, saved first where allowed; a failed save
        (a full disk) leaves the previous files and is a warning: the database stays the truth,
        and the next opening brings the previous graph up to date. Caller holds the lock."""
        if graph is None:  # no embeddings: no graph, none left on disk to be opened later
            if self.writable:
                for old in [*self._graph_files(), self.meta_path]:
                    old.unlink(missing_ok=True)
            self.graph, self.stamp, self.mapped = None, None, False
            return
        stamp = stamp_of(np.asarray(graph.keys, dtype=np.int64))
        if self.writable:
            try:
                self._save(graph, stamp)
            except OSError as exc:
                warnings.warn(f"the search graph beside {self.meta_path} was not saved: {exc}", RuntimeWarning, stacklevel=4)
        self.graph, self.stamp, self.mapped = graph, stamp, False

    def _save(self, graph, stamp: Stamp) -> None:  # noqa: ANN001
        """``graph`` as the next generation's file, then the .json naming it (atomically), then
        older generations removed (a process that has one mapped keeps reading it)."""
        assert self.meta_path is not None
        generation = 1 + max([int(p.name.rsplit(".", 2)[-2]) for p in self._graph_files()] or [0])
        path = self.meta_path.with_name(f"{self.meta_path.name.removesuffix('.json')}.{generation}.usearch")
        temporary = self.meta_path.with_name(self.meta_path.name + ".tmp")
        try:
            graph.save(str(path))
            temporary.write_text(json.dumps({"format": FORMAT, "file": path.name, "stamp": list(stamp),
                                             "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD}))
            os.replace(temporary, self.meta_path)
        except BaseException:
            path.unlink(missing_ok=True)
            temporary.unlink(missing_ok=True)
            raise
        for old in self._graph_files():
            if old != path:
                old.unlink(missing_ok=True)

    def _graph_files(self) -> list[Path]:
        assert self.meta_path is not None
        prefix = self.meta_path.name.removesuffix(".json") + "."
        return [p for p in self.meta_path.parent.glob(prefix + "*.usearch") if p.name[len(prefix):-len(".usearch")].isdigit()]

    def nearest(self, query: np.ndarray, limit: int, subset: Subset | None = None,
                expansion: int = EXPANSION_SEARCH) -> tuple[np.ndarray, np.ndarray]:
        """About the ``limit`` nearest doc ids (within ``subset``) and their cosine distances,
        nearest first, ties by doc id; ``expansion`` is the beam (ef) of an unfiltered search."""
        query = unit_rows(np.asarray(query, np.float32)[None, :])[0]
        with self.lock:
            graph = self.graph
            total = len(graph) if graph is not None else 0
            if not total:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            if subset is None:
                graph.expansion_search = max(expansion, limit)
                return self._ordered(graph.search(query, min(limit, total)), limit)
            allowed = subset.count()
            fetch = min(total, math.ceil((limit + 1) * total / max(allowed, 1) * OVERFETCH))
            if allowed * ROW_READ_US <= EF_PER_CANDIDATE * fetch * EF_US:
                ids, vectors = subset.rows()
                if not len(ids):
                    return np.zeros(0, np.int64), np.zeros(0, np.float32)
                found, distances = ranked((unit_rows(vectors) @ query)[None, :], ids, limit)
                return found[0], distances[0]
            while True:
                graph.expansion_search = max(expansion, EF_PER_CANDIDATE * fetch)  # under the lock: this search's own
                matches = graph.search(query, fetch)
                keys = matches.keys.astype(np.int64)
                keep = subset.keep(keys)
                if keep.sum() >= limit or fetch >= total:
                    return self._ordered(matches, limit, keep)
                fetch = min(total, fetch * 4)

    @staticmethod
    def _ordered(matches, limit: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
        keys, distances = matches.keys.astype(np.int64), matches.distances.astype(np.float32)
        if keep is not None:
            keys, distances = keys[keep], distances[keep]
        order = np.lexsort((keys, distances))[:limit]
        return keys[order], distances[order]
