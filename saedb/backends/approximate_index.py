"""Approximate nearest neighbours for the embedded default: an HNSW graph (faiss) over a
DuckDB database's own embeddings, saved beside the file.

Rules:
- Built from the database's vectors, unit-normalised (inner product = cosine), only when asked
  (``saedb index``, or a load that leaves at least APPROXIMATE_FROM embeddings): never by a search.
- Saved as ``<file>.hnsw.<n>.faiss`` beside ``<file>.hnsw.<n>.rows.npy`` (for each position of
  the graph: the doc id, its content hash, and whether the table still holds that row) and
  named, with a fingerprint of both, by ``<file>.hnsw.json``, which is replaced atomically after
  both are written: a crash leaves the previous generation. Opened with the vectors
  memory-mapped (faiss's IO_FLAG_MMAP_IFC): start-up reads the links, not the vectors.
- Used only when it is the graph saedb wrote: a file whose fingerprint differs (another
  database's graph copied over it, a truncated or overwritten file), that faiss cannot read or
  that an older saedb wrote (usearch) is a warning, once, and searches are exact until
  ``saedb index`` (or the next load) builds it again.
- Kept in step: each search reads the table's stamp (exact_index: doc ids and the sum of
  content hashes) in the statement that reads its papers (on a read-only instance the stamp is
  read once: the file cannot change while it is open) and compares it with the stamp of the
  rows the graph holds; on a difference the (doc id, hash) pairs are compared, rows gone or
  rewritten are marked dead and new or rewritten rows added (to an owned copy of a mapped
  graph), the result is saved where the database is writable, and the search is done again.
  faiss's HNSW cannot unlink a vector, so a dead row stays a waypoint of the walk and is never
  an answer (every search then passes the live rows as a bitmap); once dead rows are
  COMPACT_SHARE of the graph it is built again from the table. So a graph answers only for the
  vectors the table holds now: ids and contents.
- A filter (``Subset``) over-fetches: the walk returns candidates in proportion to the share of
  documents the filter rejects, checked against its positions (a mask by position, no SQL), and
  widens until ``limit`` pass; a filter so narrow that ranking its documents costs less than
  that walk ranks them exactly, their vectors read from the graph's own storage. A read-only
  instance keeps the positions of its most recent FILTERS_KEPT filters, and a kept filter
  between those (exact) and GRAPH_BELOW_SHARE of the documents gets a graph of its own, built in
  the background (filter_graphs): until it is ready the filter over-fetches.
- A read-only file's graph never changes in place (a change makes a new one), so its searches
  run in parallel without a lock; elsewhere searches and changes take the index's lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from saedb.backends.exact_index import (LOAD_BLOCK, ReadRange, Stamp, candidates, ordered, read_unit_rows, scored,
                                        stamp_of)
from saedb.backends.filter_graphs import CONNECTIVITY, EXPANSION_ADD, Allowed, new_index, walked
from saedb.sae import unit_rows

# Measured by bench_search.py (docs/benchmarks.md, "beside the libraries"): exact search costs ~17 ms at 87k
# documents and ~100 ms at 1M; the graph answers in under 1 ms at either. faiss's HNSW, M=32, efConstruction 128.
APPROXIMATE_FROM = 100_000  # embeddings from which a load builds the graph (below: exact, about 20 ms or less)
# Every beam is the smallest ef that bench_search.py's recall curve measured at recall@10 0.99 or
# more against exact search. Plain queries (87k, real MiniLM titles): ef 100 0.986, 150 0.994.
EXPANSION_SEARCH = 150  # ef at search (at least the number of candidates asked for)
# A steered query lies off the data, where a fixed beam loses recall, the more so the farther it
# was turned: its ef is read from its cosine to the query it came from, by band of that cosine,
# the smallest ef at 0.99 in that band at both 87k and 1M (600 queries each: steer_toward
# 0.05-0.7 and "add" 0.6 of random features). 87k / 1M: >= 0.85: ef 150 0.991-0.993 / 0.994-0.999;
# 0.8-0.85: ef 200 0.992 / 0.996; 0.7-0.8: ef 300 0.992 / 0.995; 0.6-0.7: ef 600 0.995 / 0.993;
# below 0.6: ef 1200 0.967-0.993 / 0.958-1.000 (ef 1000: 0.933-0.993 / 0.933-0.991).
# (cosine at least, ef), first match wins.
STEERED_EXPANSION: tuple[tuple[float, int], ...] = ((0.85, 150), (0.8, 200), (0.7, 300), (0.6, 600), (-1.0, 1200))


def steered_expansion(cosine: float) -> int:
    """The beam of a query steered to ``cosine`` with the query it came from."""
    return next(ef for least, ef in STEERED_EXPANSION if cosine >= least)


# A filter allowing a share s of the documents over-fetches: the walk returns its OVERFETCH * limit / s
# nearest (ef EF_PER_CANDIDATE times as many), of which the allowed ones are the answer; fewer than ``limit`` allowed
# among them (a filter the query's neighbourhood avoids): four times as many, until enough.
# faiss's own filtered walk (IDSelector) was tried twice and is not used: it returns the allowed
# nodes it happened to visit, and a query far from the filter's documents (an astro-ph question
# within the ML corpus) visits few: bench/bench_filters.py (87k astro-ph + 9.7k ML papers) measured
# recall@10 0.17-0.24 at ef 300-900 for the ML tenth and 0.90-0.94 for astro-ph's oldest tenth,
# where over-fetching keeps 0.999-1.000; it was level only on a random tenth.
# At 87k (random filters, 200 queries) recall@10 0.99 took ef ~300 at 15% of the documents, ~800 at
# 5%. bench_search's year filters: at 87k (36%) 4 and 1 gave 0.975, 4 and 1.5 0.990; at 1M
# (20-25%) 3 and 1.5 gave 0.967-0.970, 4 and 2 (the setting of the usearch graph before) 0.99.
OVERFETCH, EF_PER_CANDIDATE = 4.0, 2.0
# It ranks the allowed documents exactly instead when that costs less than the walk: ROW_US per
# allowed row (its vector gathered from the graph's storage and multiplied) against EF_US per unit of ef.
# At 1M: 6.5 ms for 20k allowed rows (the gather of their vectors dominates); ef 150 0.42 ms, ef 1000 2.5 ms.
ROW_US, EF_US = 0.3, 2.5
FILTERS_KEPT = 32  # a read-only instance's filters kept (4 bytes per allowed document, 1 per position)
COMPACT_SHARE = 0.25  # dead rows, as a share of the graph, from which a change rebuilds it
FORMAT = 3  # of the .json naming the graph (2: usearch, not read)
SAMPLED_BLOCKS, BLOCK = 256, 4096  # a graph file's fingerprint: its size and these blocks spread over it


class Subset(Protocol):
    """The documents a filtered search may return."""

    key: tuple | None  # the same key, the same documents (None: they may change between two searches)

    def ids(self) -> np.ndarray:
        """Their doc ids, sorted."""


def fingerprint(path: Path) -> str:
    """A digest of the file's size and of SAMPLED_BLOCKS blocks spread over it (all of a small
    file): any other file in its place (another graph, a truncated one) differs, and opening a
    1M-row graph reads 1 MB, not the graph."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as file:
        if size <= SAMPLED_BLOCKS * BLOCK:
            digest.update(file.read())
        else:
            for i in range(SAMPLED_BLOCKS):
                file.seek(i * (size - BLOCK) // (SAMPLED_BLOCKS - 1))
                digest.update(file.read(BLOCK))
    return digest.hexdigest()


def empty_answer() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)


def owned_copy(index: Any) -> Any:
    """A graph that can change: faiss aborts the process when a mapped one is added to, and its
    clone_index keeps the mapping."""
    import faiss

    return faiss.deserialize_index(faiss.serialize_index(index))


@dataclass
class Graph:
    """One faiss graph and the rows it holds. faiss numbers vectors by position (0, 1, ...):
    ``labels``, ``row_hashes`` and ``live`` say, per position, the doc id, its content hash and
    whether the table still holds it; the live rows sorted by doc id are ``doc_ids`` / ``hashes``
    / ``positions``."""

    index: Any  # faiss.IndexHNSWFlat
    labels: np.ndarray
    row_hashes: np.ndarray
    live: np.ndarray
    mapped: bool  # the saved file, its vectors memory-mapped: never changed in place
    doc_ids: np.ndarray = field(init=False)
    hashes: np.ndarray = field(init=False)
    positions: np.ndarray = field(init=False)
    live_bits: np.ndarray | None = field(init=False)  # None: every position is live
    stamp: Stamp = field(init=False)
    filters: OrderedDict[tuple, Allowed] = field(init=False, default_factory=OrderedDict)
    lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.labels, self.row_hashes = self.labels.astype(np.int64), self.row_hashes.astype(np.uint64)
        self.live = self.live.astype(bool)
        live = np.flatnonzero(self.live)
        order = np.argsort(self.labels[live], kind="stable")
        self.positions = live[order]
        self.doc_ids, self.hashes = self.labels[self.positions], self.row_hashes[self.positions]
        self.live_bits = None if self.live.all() else np.packbits(self.live, bitorder="little")
        self.stamp = stamp_of(self.doc_ids, self.hashes)

    @property
    def vectors(self) -> np.ndarray:
        """The unit vectors by position, read-only (memory-mapped where the graph is)."""
        import faiss

        total, dim = self.index.ntotal, self.index.d
        view = faiss.rev_swig_ptr(faiss.downcast_index(self.index.storage).get_xb(), total * dim).reshape(total, dim)
        view.flags.writeable = False
        return view

    def allowed(self, subset: Subset) -> Allowed:
        """The live rows ``subset`` allows (kept by its key, when it has one, and then given a
        graph of their own where they qualify)."""
        if subset.key is not None:
            with self.lock:
                if subset.key in self.filters:
                    self.filters.move_to_end(subset.key)
                    return self._planned(self.filters[subset.key])
        ids = subset.ids()
        at = np.minimum(np.searchsorted(self.doc_ids, ids), max(len(self.doc_ids) - 1, 0))
        positions = self.positions[at[self.doc_ids[at] == ids]] if len(self.doc_ids) else np.zeros(0, np.int64)
        allowed = Allowed(np.sort(positions).astype(np.int32), len(self.labels))
        if subset.key is not None:
            with self.lock:
                self.filters[subset.key] = allowed
                while len(self.filters) > FILTERS_KEPT:
                    self.filters.popitem(last=False)
                self._planned(allowed)
        return allowed

    def _planned(self, allowed: Allowed) -> Allowed:
        """``allowed``, its own graph started where it qualifies. Caller holds the lock."""
        allowed.plan_graph(len(self.doc_ids), list(self.filters.values()),
                           len(allowed.positions) * ROW_US > EXPANSION_SEARCH * EF_US, lambda positions: self.vectors[positions])
        return allowed

    def walk(self, query: np.ndarray, count: int, expansion: int) -> tuple[np.ndarray, np.ndarray]:
        """The positions of about the ``count`` nearest live rows, and their cosine distances."""
        import faiss

        selector = None  # kept alive until the search returns
        if self.live_bits is not None:
            selector = faiss.IDSelectorBitmap(len(self.labels), faiss.swig_ptr(self.live_bits))
        return walked(self.index, query, count, expansion, selector)

    def scored(self, query: np.ndarray, positions: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` nearest of these positions' rows by exact_index's one kernel."""
        return scored(query, self.labels[positions], self.vectors[positions], limit)

    def ranked_exactly(self, query: np.ndarray, positions: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.vectors[positions]
        chosen = candidates(vectors @ query, limit)
        return scored(query, self.labels[positions[chosen]], vectors[chosen], limit)


def built_from(blocks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Graph | None:
    """A new graph of the (doc ids, unit vectors, hashes) blocks; None: no rows."""
    index, id_parts, hash_parts = None, [], []
    for ids, rows, hashes in blocks:
        if not len(ids):
            continue
        if index is None:
            index = new_index(rows.shape[1])
        index.add(np.ascontiguousarray(rows, np.float32))
        id_parts.append(ids)
        hash_parts.append(hashes)
    if index is None:
        return None
    labels = np.concatenate(id_parts)
    return Graph(index, labels, np.concatenate(hash_parts), np.ones(len(labels), bool), mapped=False)


class ApproximateIndex:
    """The HNSW graph of one database file's embeddings (``<file>.<schema>`` for a workspace's;
    None: an in-memory database's, never saved)."""

    def __init__(self, database: Path | None, writable: bool) -> None:
        self.meta_path = None if database is None else database.with_name(database.name + ".hnsw.json")
        self.writable = writable and database is not None
        self.frozen = database is not None and not writable  # a read-only file: the graph never changes in place
        self.lock = threading.Lock()
        self.current: Graph | None = None
        self._open()

    @property
    def built(self) -> bool:
        return self.current is not None

    @property
    def mapped(self) -> bool:
        return self.current is not None and self.current.mapped

    @property
    def stamp(self) -> Stamp | None:
        return None if self.current is None else self.current.stamp

    def wait_for_filter_graphs(self, timeout: float | None = None) -> bool:
        """Wait until every build of a kept filter's own graph that was started has ended; False:
        ``timeout`` seconds passed first."""
        graph = self.current
        if graph is None:
            return True
        with graph.lock:
            started = [allowed for allowed in graph.filters.values() if allowed.planned]
        return all(allowed.ready.wait(timeout) for allowed in started)

    def _open(self) -> None:
        """The saved graph, when its .json names files that are there, are those saedb wrote and
        can be read; else none (a warning where a graph was there but cannot be used)."""
        if self.meta_path is None or not self.meta_path.exists():
            return
        import faiss

        meta = json.loads(self.meta_path.read_text())
        if meta.get("format") != FORMAT:
            return self._unusable(f"{self.meta_path} was written by an older saedb")
        graph_path, rows_path = self.meta_path.with_name(meta["file"]), self.meta_path.with_name(meta["rows"])
        if not graph_path.exists() or not rows_path.exists():
            return
        if fingerprint(graph_path) != meta["graph_fingerprint"] or fingerprint(rows_path) != meta["rows_fingerprint"]:
            return self._unusable(f"{graph_path} is not the graph saedb wrote beside this database")
        try:
            index = faiss.read_index(str(graph_path), faiss.IO_FLAG_MMAP_IFC)
            rows = np.load(rows_path)
        except (ValueError, OSError, RuntimeError) as exc:
            return self._unusable(f"{graph_path} cannot be read ({exc})")
        if not isinstance(index, faiss.IndexHNSWFlat) or rows.ndim != 2 or rows.shape[1] != 3 or index.ntotal != len(rows):
            return self._unusable(f"{graph_path} cannot be read")
        self.current = Graph(index, rows[:, 0], rows[:, 1], rows[:, 2], mapped=True)

    def _unusable(self, why: str) -> None:
        warnings.warn(f"{why}: searches are exact until `saedb index` builds the search graph again", RuntimeWarning, stacklevel=2)

    def build(self, span: tuple[int, int, int], read_range: ReadRange) -> None:
        """A new graph of every embedding (``span``: first doc id, last, count), read LOAD_BLOCK ids at a time."""
        low, high, _ = span
        graph = built_from(read_unit_rows(read_range, start, min(start + LOAD_BLOCK, high + 1) - 1, 0)
                           for start in range(low, high + 1, LOAD_BLOCK))
        with self.lock:
            self._install(graph)

    def sync(self, stamp: Stamp, all_rows: Callable[[], tuple[np.ndarray, np.ndarray]],
             rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Bring the graph to the table whose stamp is ``stamp``: ``all_rows()`` gives its (doc
        ids, content hashes), ``rows(ids)`` the (doc ids, vectors, hashes) of some of them."""
        with self.lock:
            graph = self.current
            if graph is None or stamp == graph.stamp:
                return
            present, present_hashes = (np.asarray(a) for a in all_rows())
            _, mine, theirs = np.intersect1d(graph.doc_ids, present, assume_unique=True, return_indices=True)
            rewritten = graph.doc_ids[mine[graph.hashes[mine] != present_hashes[theirs]]]
            gone = np.union1d(np.setdiff1d(graph.doc_ids, present), rewritten)
            new = np.union1d(np.setdiff1d(present, graph.doc_ids), rewritten)
            live = graph.live.copy()
            live[graph.positions[np.searchsorted(graph.doc_ids, gone)]] = False

            def blocks(ids: np.ndarray) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
                for start in range(0, len(ids), LOAD_BLOCK):
                    found, vectors, hashes = rows(ids[start : start + LOAD_BLOCK])
                    yield np.asarray(found, np.int64), unit_rows(np.asarray(vectors, np.float32)), np.asarray(hashes, np.uint64)

            if len(live) - live.sum() > COMPACT_SHARE * (live.sum() + len(new)):
                return self._install(built_from(blocks(present)))
            added = [block for block in blocks(new) if len(block[0])]  # all read before the graph changes
            index = owned_copy(graph.index) if graph.mapped or self.frozen else graph.index
            for _, vectors, _ in added:
                index.add(np.ascontiguousarray(vectors))
            self._install(Graph(index, np.concatenate([graph.labels, *(ids for ids, _, _ in added)]),
                                np.concatenate([graph.row_hashes, *(hashes for _, _, hashes in added)]),
                                np.concatenate([live, np.ones(sum(len(ids) for ids, _, _ in added), bool)]), mapped=False))

    def _install(self, graph: Graph | None) -> None:
        """Use ``graph`` (None: no rows) from now on, saved first where allowed; a failed save (a
        full disk) leaves the previous files and is a warning: the database stays the truth, and
        the next opening brings the previous graph up to date. Caller holds the lock."""
        if graph is None:  # no embeddings: no graph, none left on disk to be opened later
            if self.writable:
                for old in [*self._generation_files(), self.meta_path]:
                    old.unlink(missing_ok=True)
            self.current = None
            return
        if self.writable:
            try:
                self._save(graph)
            except OSError as exc:
                warnings.warn(f"the search graph beside {self.meta_path} was not saved: {exc}", RuntimeWarning, stacklevel=4)
        self.current = graph

    def _save(self, graph: Graph) -> None:
        """``graph`` and its rows as the next generation's files, then the .json naming them
        (atomically), then older generations removed (a process that has one mapped keeps reading it)."""
        import faiss

        assert self.meta_path is not None
        base = self.meta_path.name.removesuffix(".json")
        generation = 1 + max([self._generation(p) for p in self._generation_files()] or [0])
        path = self.meta_path.with_name(f"{base}.{generation}.faiss")
        rows_path = self.meta_path.with_name(f"{base}.{generation}.rows.npy")
        temporary = self.meta_path.with_name(self.meta_path.name + ".tmp")
        try:
            try:
                faiss.write_index(graph.index, str(path))
            except RuntimeError as exc:  # faiss says a failed write (a full disk) this way
                raise OSError(str(exc)) from exc
            np.save(rows_path, np.stack([graph.labels.astype(np.uint64), graph.row_hashes, graph.live.astype(np.uint64)], axis=1))
            temporary.write_text(json.dumps({"format": FORMAT, "file": path.name, "rows": rows_path.name,
                                             "graph_fingerprint": fingerprint(path), "rows_fingerprint": fingerprint(rows_path),
                                             "stamp": list(graph.stamp), "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD}))
            os.replace(temporary, self.meta_path)
        except BaseException:
            for written in (path, rows_path, temporary):
                written.unlink(missing_ok=True)
            raise
        for old in self._generation_files():
            if self._generation(old) != generation:
                old.unlink(missing_ok=True)

    def _generation(self, path: Path) -> int:
        assert self.meta_path is not None
        return int(path.name[len(self.meta_path.name.removesuffix(".json")) + 1 :].split(".", 1)[0])

    def _generation_files(self) -> list[Path]:
        """Every generation's graph and rows files beside the database (an older saedb's usearch files too)."""
        assert self.meta_path is not None
        prefix = self.meta_path.name.removesuffix(".json") + "."
        return [p for p in self.meta_path.parent.glob(prefix + "*") if p.name[len(prefix):].split(".", 1)[0].isdigit()
                and p.name.endswith((".faiss", ".usearch", ".rows.npy"))]

    def nearest(self, query: np.ndarray, limit: int, subset: Subset | None = None,
                expansion: int = EXPANSION_SEARCH) -> tuple[np.ndarray, np.ndarray]:
        """About the ``limit`` nearest doc ids (within ``subset``) and their cosine distances,
        nearest first, ties by doc id; ``expansion`` is the beam (ef) of an unfiltered search.
        The walk finds the candidates, exact_index's one kernel scores them (``Graph.scored``)."""
        query = unit_rows(np.asarray(query, np.float32)[None, :])[0]
        with nullcontext() if self.frozen else self.lock:
            graph = self.current
            if graph is None or not len(graph.doc_ids):
                return empty_answer()
            live = len(graph.doc_ids)
            if subset is None:
                positions, _ = graph.walk(query, min(limit, live), expansion)
                return graph.scored(query, positions, limit)
            allowed = graph.allowed(subset)
            if allowed.graph is not None:
                positions, _ = allowed.walk(query, limit, expansion)
                return graph.scored(query, positions, limit)
            count = len(allowed.positions)
            fetch = min(live, math.ceil(OVERFETCH * limit * live / max(count, 1)))
            while count and count * ROW_US > EF_PER_CANDIDATE * fetch * EF_US:
                positions, _ = graph.walk(query, fetch, max(expansion, math.ceil(EF_PER_CANDIDATE * fetch)))
                keep = allowed.mask[positions]
                if keep.sum() >= limit or fetch >= live:
                    return graph.scored(query, positions[keep], limit)
                fetch = min(live, fetch * 4)
            return graph.ranked_exactly(query, allowed.positions, limit) if count else empty_answer()
