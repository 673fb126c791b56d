"""Approximate nearest neighbours for the embedded default: an HNSW graph (usearch) over a
DuckDB database's own embeddings, saved beside the file.

Rules:
- Built from the database's vectors, unit-normalised (inner product = cosine), only when asked
  (``saedb index``, or a load that leaves at least APPROXIMATE_FROM embeddings): never by a search.
- Saved as ``<file>.hnsw.<n>.usearch`` beside ``<file>.hnsw.<n>.rows.npy`` (the doc id and
  content hash of each row it holds) and named, with a fingerprint of both, by
  ``<file>.hnsw.json``, which is replaced atomically after both are written: a crash leaves the
  previous generation. Opened memory-mapped (``view``): start-up reads no vectors.
- Used only when it is the graph saedb wrote: a file whose fingerprint differs (another
  database's graph copied over it, a truncated or overwritten file) or that usearch cannot read
  is a warning, once, and searches are exact until ``saedb index`` builds it again.
- Kept in step: each search reads the table's stamp (exact_index: doc ids and the sum of
  content hashes) in the statement that reads its papers (on a read-only instance the stamp is
  read once: the file cannot change while it is open) and compares it with the stamp of the
  rows the graph holds; on a difference the (doc id, hash) pairs are compared, rows gone or
  rewritten are removed and new or rewritten rows added (on an in-memory copy of a mapped
  graph), the result is saved where the database is writable, and the search is done again.
  So a graph answers only for the vectors the table holds now: ids and contents.
- A filter (``Subset``) over-fetches: candidates are asked for in proportion to the share of
  documents it allows and checked against it; a filter so narrow that reading its documents
  costs less than those candidates ranks them exactly (their vectors read from the database).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from saedb.backends.exact_index import LOAD_BLOCK, ReadRange, Stamp, ranked, read_unit_rows, stamp_of
from saedb.sae import unit_rows

# Measured by bench_search.py (docs/benchmarks.md, "beside the libraries"): exact search costs ~17 ms at 87k
# documents and ~100 ms at 1M; the graph answers in ~1 ms at either. At 87k real MiniLM queries,
# M=16 reached recall@10 0.984 at ef 100 and M=32 0.992 (0.86 ms), for 1.4x the build time.
APPROXIMATE_FROM = 100_000  # embeddings from which a load builds the graph (below: exact, about 20 ms or less)
CONNECTIVITY = 32  # HNSW M
EXPANSION_ADD = 128  # efConstruction
EXPANSION_SEARCH = 100  # ef at search (at least the number of candidates asked for)
# A steered query lies off the data, where a fixed beam loses recall, the more so the farther it
# was turned: its ef is read from its cosine to the query it came from, the smallest ef that
# bench_search.py's steered recall curve (recall@10 by cosine band and ef) measured at 0.99 or
# more in that band. At 87k (MiniLM, 600 queries: steer_toward 0.05-0.7 and "add" 0.6 of random
# features): cosine >= 0.85: ef 100 0.984, 150 0.991; 0.5-0.85: 200 0.981-0.988, 300 0.993;
# below 0.5: 400 0.981, 600 0.986, 800 0.993. (cosine at least, ef), first match wins.
STEERED_EXPANSION: tuple[tuple[float, int], ...] = ((0.85, 150), (0.5, 300), (-1.0, 800))


def steered_expansion(cosine: float) -> int:
    """The beam of a query steered to ``cosine`` with the query it came from."""
    return next(ef for least, ef in STEERED_EXPANSION if cosine >= least)


# A filter over-fetches: OVERFETCH candidates per allowed hit expected (limit / share), searched
# with ef EF_PER_CANDIDATE times that. On bench_search's 1M corpus (40 queries): 2 and 1 gave recall@10
# 0.95 / 0.93 for a 10% corpus and a 25% range of years; 4 and 2 gave 0.99 / 0.99.
OVERFETCH, EF_PER_CANDIDATE = 4.0, 2
# It ranks the allowed documents exactly instead when reading them costs less than that search:
# about 2 µs per row read from DuckDB against 15 µs per unit of ef (1M, bench_search).
ROW_READ_US, EF_US = 2.0, 15.0
BUILD_THREADS = 0  # usearch's default: every core
FORMAT = 2  # of the .json naming the graph (1: no content hashes, not used)
SAMPLED_BLOCKS, BLOCK = 256, 4096  # a graph file's fingerprint: its size and these blocks spread over it


class Subset(Protocol):
    """The documents a filtered search may return."""

    def count(self) -> int:
        """How many documents it allows."""

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Their doc ids and embeddings."""

    def keep(self, candidates: np.ndarray) -> np.ndarray:
        """A boolean mask over ``candidates``: True where the doc id is allowed."""


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


class ApproximateIndex:
    """The HNSW graph of one database file's embeddings (``<file>.<schema>`` for a workspace's;
    None: an in-memory database's, never saved)."""

    def __init__(self, database: Path | None, writable: bool) -> None:
        self.meta_path = None if database is None else database.with_name(database.name + ".hnsw.json")
        self.writable = writable and database is not None
        self.lock = threading.Lock()
        self.graph = None  # usearch.index.Index
        self.mapped = False  # the graph is the saved file, memory-mapped (read-only) until first changed
        self.doc_ids = np.zeros(0, np.int64)  # the rows the graph holds, in doc id order,
        self.hashes = np.zeros(0, np.uint64)  # and their content hashes
        self.stamp: Stamp | None = None
        self._open()

    @property
    def built(self) -> bool:
        return self.graph is not None

    def _open(self) -> None:
        """The saved graph, when its .json names files that are there, are those saedb wrote and
        can be read; else none (a warning where a graph was there but cannot be used)."""
        if self.meta_path is None or not self.meta_path.exists():
            return
        from usearch.index import Index

        meta = json.loads(self.meta_path.read_text())
        if meta.get("format") != FORMAT:
            return self._unusable(f"{self.meta_path} was written by an older saedb (no content hashes)")
        graph_path, rows_path = self.meta_path.with_name(meta["file"]), self.meta_path.with_name(meta["rows"])
        if not graph_path.exists() or not rows_path.exists():
            return
        if fingerprint(graph_path) != meta["graph_fingerprint"] or fingerprint(rows_path) != meta["rows_fingerprint"]:
            return self._unusable(f"{graph_path} is not the graph saedb wrote beside this database")
        try:
            graph = Index.restore(str(graph_path), view=True)
            rows = np.load(rows_path)
        except (ValueError, OSError, RuntimeError) as exc:
            return self._unusable(f"{graph_path} cannot be read ({exc})")
        if graph is None or len(graph) != len(rows):
            return self._unusable(f"{graph_path} cannot be read")
        self.graph, self.mapped = graph, True
        self.doc_ids, self.hashes = rows[:, 0].astype(np.int64), rows[:, 1]
        self.stamp = stamp_of(self.doc_ids, self.hashes)

    def _unusable(self, why: str) -> None:
        warnings.warn(f"{why}: searches are exact until `saedb index` builds the search graph again", RuntimeWarning, stacklevel=2)

    def build(self, span: tuple[int, int, int], read_range: ReadRange) -> None:
        """A new graph of every embedding (``span``: first doc id, last, count), read LOAD_BLOCK ids at a time."""
        from usearch.index import Index, MetricKind

        low, high, _ = span
        graph = None
        id_parts, hash_parts = [], []
        for start in range(low, high + 1, LOAD_BLOCK):
            ids, rows, hashes = read_unit_rows(read_range, start, min(start + LOAD_BLOCK, high + 1) - 1, 0)
            if not len(ids):
                continue
            if graph is None:
                graph = Index(ndim=rows.shape[1], metric=MetricKind.IP, dtype="f32", connectivity=CONNECTIVITY,
                              expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
            graph.add(ids, rows, threads=BUILD_THREADS)
            id_parts.append(ids)
            hash_parts.append(hashes)
        with self.lock:
            self._install(graph, np.concatenate(id_parts or [np.zeros(0, np.int64)]),
                          np.concatenate(hash_parts or [np.zeros(0, np.uint64)]))

    def sync(self, stamp: Stamp, all_rows: Callable[[], tuple[np.ndarray, np.ndarray]],
             rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Bring the graph to the table whose stamp is ``stamp``: ``all_rows()`` gives its (doc
        ids, content hashes), ``rows(ids)`` the (doc ids, vectors, hashes) of some of them."""
        with self.lock:
            if self.graph is None or stamp == self.stamp:
                return
            present, present_hashes = (np.asarray(a) for a in all_rows())
            _, mine, theirs = np.intersect1d(self.doc_ids, present, assume_unique=True, return_indices=True)
            rewritten = self.doc_ids[mine[self.hashes[mine] != present_hashes[theirs]]]
            gone = np.union1d(np.setdiff1d(self.doc_ids, present), rewritten)
            new = np.union1d(np.setdiff1d(present, self.doc_ids), rewritten)
            graph = self.graph.copy() if self.mapped else self.graph  # a mapped graph cannot change
            keep = ~np.isin(self.doc_ids, gone)
            id_parts, hash_parts = [self.doc_ids[keep]], [self.hashes[keep]]
            if len(gone):
                graph.remove(gone.astype(np.uint64))
            for start in range(0, len(new), LOAD_BLOCK):
                ids, vectors, hashes = rows(new[start : start + LOAD_BLOCK])
                if len(ids):
                    graph.add(ids, unit_rows(np.asarray(vectors, np.float32)), threads=BUILD_THREADS)
                    id_parts.append(ids)
                    hash_parts.append(hashes)
            self._install(graph, np.concatenate(id_parts), np.concatenate(hash_parts))

    def _install(self, graph, doc_ids: np.ndarray, hashes: np.ndarray) -> None:  # noqa: ANN001 - usearch.index.Index
        """Use ``graph`` (None: no rows), holding the rows ``doc_ids`` with content ``hashes``, from
        now on, saved first where allowed; a failed save (a full disk) leaves the previous files
        and is a warning: the database stays the truth, and the next opening brings the previous
        graph up to date. Caller holds the lock."""
        if graph is None:  # no embeddings: no graph, none left on disk to be opened later
            if self.writable:
                for old in [*self._generation_files(), self.meta_path]:
                    old.unlink(missing_ok=True)
            self.graph, self.stamp, self.mapped = None, None, False
            self.doc_ids, self.hashes = np.zeros(0, np.int64), np.zeros(0, np.uint64)
            return
        order = np.argsort(doc_ids, kind="stable")
        doc_ids, hashes = doc_ids[order].astype(np.int64), hashes[order].astype(np.uint64)
        if self.writable:
            try:
                self._save(graph, doc_ids, hashes)
            except OSError as exc:
                warnings.warn(f"the search graph beside {self.meta_path} was not saved: {exc}", RuntimeWarning, stacklevel=4)
        self.graph, self.mapped, self.doc_ids, self.hashes = graph, False, doc_ids, hashes
        self.stamp = stamp_of(doc_ids, hashes)

    def _save(self, graph, doc_ids: np.ndarray, hashes: np.ndarray) -> None:  # noqa: ANN001
        """``graph`` and its rows as the next generation's files, then the .json naming them
        (atomically), then older generations removed (a process that has one mapped keeps reading it)."""
        assert self.meta_path is not None
        base = self.meta_path.name.removesuffix(".json")
        generation = 1 + max([self._generation(p) for p in self._generation_files()] or [0])
        path = self.meta_path.with_name(f"{base}.{generation}.usearch")
        rows_path = self.meta_path.with_name(f"{base}.{generation}.rows.npy")
        temporary = self.meta_path.with_name(self.meta_path.name + ".tmp")
        try:
            graph.save(str(path))
            np.save(rows_path, np.stack([doc_ids.astype(np.uint64), hashes], axis=1))
            temporary.write_text(json.dumps({"format": FORMAT, "file": path.name, "rows": rows_path.name,
                                             "graph_fingerprint": fingerprint(path), "rows_fingerprint": fingerprint(rows_path),
                                             "stamp": list(stamp_of(doc_ids, hashes)),
                                             "connectivity": CONNECTIVITY, "expansion_add": EXPANSION_ADD}))
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
        """Every generation's graph and rows files beside the database."""
        assert self.meta_path is not None
        prefix = self.meta_path.name.removesuffix(".json") + "."
        return [p for p in self.meta_path.parent.glob(prefix + "*") if p.name[len(prefix):].split(".", 1)[0].isdigit()
                and p.name.endswith((".usearch", ".rows.npy"))]

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
