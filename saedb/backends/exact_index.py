"""Exact nearest neighbours over a DuckDB database's own embeddings, in process.

DuckDB scans FLOAT[d] arrays with ``array_cosine_distance`` at about 1 µs per row; the same
exact ranking from a cached float32 matrix and one BLAS product is 5-10 times faster. The
cache is checked with every search against the table's stamp: (count, max, sum) of the
embeddings' doc ids and the sum of their ``embedding_hash`` (the table checks that each equals
``hash(embedding)``, so a vector cannot change without its hash). The stamp is read in the
statement that reads the hits' papers (once, on a read-only instance: no process can write the
file while it is open): on a difference, rows added after the last search are appended, any
other change (a deleted or rewritten row) reloads the matrix, and the search is done again.

One query, one answer: BLAS and faiss's SIMD kernels only choose candidates (their last bits
depend on the CPU's vector width, on the shape of the product and, in faiss's walk, on whether a
row was scored in a batch of four); every search path, exact or approximate, ends in
``scored``: each candidate's distance by ``distances_to``, one kernel that sums each row on its
own, in float64, and rounds once. So a hit's distance, and the order of hits, do not depend on
the index that found it, its state (appended, reloaded, re-synced, rebuilt) or the rows around it.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

Stamp = tuple[int, int, int, int]  # count, max and sum of doc ids, sum of content hashes
STAMP_COLUMNS = ("count(*), coalesce(max(doc_id), 0), coalesce(sum(doc_id), 0), "
                 "coalesce(sum(embedding_hash), 0)")  # over embeddings
STAMP_SQL = f"SELECT {STAMP_COLUMNS} FROM embeddings"
# (doc ids, vectors, content hashes) with first <= doc_id < stop, in doc id order
ReadRange = Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def stamp_of(doc_ids: np.ndarray, hashes: np.ndarray) -> Stamp:
    """The stamp of a table holding exactly these rows."""
    if not len(doc_ids):
        return (0, 0, 0, 0)
    high, low = (hashes >> np.uint64(32)).sum(dtype=np.uint64), (hashes & np.uint64(0xFFFFFFFF)).sum(dtype=np.uint64)
    return len(doc_ids), int(doc_ids.max()), int(doc_ids.sum()), (int(high) << 32) + int(low)  # exact, as SQL's HUGEINT sum


def unhashed(read_range: Callable[[int, int], tuple[np.ndarray, np.ndarray]]) -> ReadRange:
    """A reader for a one-off snapshot of a backend without content hashes (hashes read as 0)."""
    def read(first: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, vectors = read_range(first, stop)
        return ids, vectors, np.zeros(len(ids), np.uint64)
    return read


# Float32 dot products of unit vectors are within d * 2^-24 of exact (2.3e-5 at d = 384): a row
# whose float32 similarity is within this margin of the limit-th may be among the limit nearest.
RANK_MARGIN = 1e-4


def distances_to(query: np.ndarray, unit_rows: np.ndarray) -> np.ndarray:
    """The cosine distance of ``query`` to each of ``unit_rows``, as float32: the one kernel every
    search ends in. Products of float32 values are exact in float64 and each row is summed on
    its own, in an order fixed by its length, so a row's distance does not depend on the rows
    scored with it, nor on the index that found it."""
    unit_query = np.asarray(query, np.float64) / np.linalg.norm(np.asarray(query, np.float64))
    return (1.0 - (np.asarray(unit_rows, np.float64) * unit_query).sum(axis=1)).astype(np.float32)


def ordered(doc_ids: np.ndarray, distances: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` nearest, ties by doc id."""
    order = np.lexsort((doc_ids, distances))[:limit]
    return doc_ids[order].astype(np.int64), distances[order].astype(np.float32)


def scored(query: np.ndarray, doc_ids: np.ndarray, unit_rows: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` nearest of these candidates by ``distances_to``, ties by doc id."""
    if not len(doc_ids):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return ordered(np.asarray(doc_ids), distances_to(query, unit_rows), limit)


def candidates(similarity: np.ndarray, limit: int) -> np.ndarray:
    """The indices of one query's ``similarity`` (float32, approximate) that may be among its
    ``limit`` most similar once scored exactly: every one within RANK_MARGIN of the limit-th."""
    if len(similarity) <= limit:
        return np.arange(len(similarity))
    kth = np.partition(similarity, len(similarity) - limit)[len(similarity) - limit]
    return np.flatnonzero(similarity >= kth - RANK_MARGIN)


def ranked(similarity: np.ndarray, doc_ids: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``similarity`` (queries × documents), the ``limit`` most similar doc ids and
    their cosine distances, nearest first, ties by doc id."""
    limit = min(limit, len(doc_ids))
    if not limit:
        return np.zeros((len(similarity), 0), np.int64), np.zeros((len(similarity), 0), np.float32)
    best = np.argpartition(-similarity, limit - 1, axis=1)[:, :limit]
    order = np.lexsort((doc_ids[best], -np.take_along_axis(similarity, best, axis=1)))
    best = np.take_along_axis(best, order, axis=1)
    return doc_ids[best], (1.0 - np.take_along_axis(similarity, best, axis=1)).astype(np.float32)


LOAD_BLOCK = 65_536  # doc ids read per range scan when (re)loading


def read_unit_rows(read_range: ReadRange, first: int, last: int, expected: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Doc ids, unit-normalised rows and content hashes with first <= doc_id <= last, read
    LOAD_BLOCK ids at a time into one array sized for ``expected`` rows (grown if there are
    more): loading 1M vectors holds them once plus one block, not twice."""
    id_parts: list[np.ndarray] = []
    hash_parts: list[np.ndarray] = []
    unit: np.ndarray | None = None
    filled = 0
    for start in range(first, last + 1, LOAD_BLOCK):
        ids, vectors, hashes = read_range(start, min(start + LOAD_BLOCK, last + 1))
        if not len(ids):
            continue
        if unit is None:
            unit = np.empty((max(expected, len(ids)), vectors.shape[1]), np.float32)
        elif filled + len(ids) > len(unit):
            unit = np.concatenate([unit[:filled], np.empty((filled + len(ids) - len(unit), unit.shape[1]), np.float32)])
        unit[filled : filled + len(ids)] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        id_parts.append(ids)
        hash_parts.append(hashes)
        filled += len(ids)
    if unit is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros(0, np.uint64)
    return (np.concatenate(id_parts).astype(np.int64, copy=False), unit[:filled],
            np.concatenate(hash_parts).astype(np.uint64, copy=False))


class ExactIndex:
    """Unit-normalised embedding rows and their doc ids, kept in step with the table."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamp: Stamp = (0, 0, 0, 0)
        self.doc_ids = np.zeros(0, np.int64)
        self.hashes = np.zeros(0, np.uint64)
        self.unit_rows = np.zeros((0, 0), np.float32)

    def refresh(self, stamp: Stamp, read_range: ReadRange) -> None:
        """Bring the cache to the table's ``stamp``. Rows past the held ones are appended; any
        other change (a deleted or rewritten row) reloads everything."""
        with self.lock:
            if stamp == self.stamp:
                return
            last = self.stamp[1]
            ids, unit, hashes = read_unit_rows(read_range, last + 1, stamp[1], stamp[0] - self.stamp[0])
            if stamp_of(np.concatenate([self.doc_ids, ids]), np.concatenate([self.hashes, hashes])) != stamp:
                self.doc_ids, self.hashes, self.unit_rows = np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros((0, 0), np.float32)
                ids, unit, hashes = read_unit_rows(read_range, 0, stamp[1], stamp[0])  # not an append
            if len(ids):
                self.doc_ids, self.hashes = np.concatenate([self.doc_ids, ids]), np.concatenate([self.hashes, hashes])
                self.unit_rows = np.concatenate([self.unit_rows, unit]) if len(self.unit_rows) else unit
            self.stamp = stamp_of(self.doc_ids, self.hashes)

    def similarity(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosine similarity of each query (rows) to every held row (float32, by BLAS), and the
        doc ids and unit rows they belong to."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        with self.lock:
            doc_ids, unit_rows = self.doc_ids, self.unit_rows
        if not len(doc_ids):
            return np.zeros((len(queries), 0), np.float32), doc_ids, unit_rows
        return (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit_rows.T, doc_ids, unit_rows

    def nearest(self, query: np.ndarray, limit: int, allowed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` nearest doc ids (among ``allowed``, if given) and their cosine distances,
        nearest first (ties by doc id): BLAS chooses the candidates, ``scored`` ranks them."""
        similarity, doc_ids, unit_rows = self.similarity(query)
        if allowed is None:
            chosen = candidates(similarity[0], limit)
        else:
            rows = np.flatnonzero(np.isin(doc_ids, np.asarray(allowed, dtype=np.int64)))
            chosen = rows[candidates(similarity[0, rows], limit)]
        return scored(query, doc_ids[chosen], unit_rows[chosen], limit)

    def top(self, queries: np.ndarray, limit: int, exclude: int | None = None) -> list[list[int]]:
        """For each query, the ``limit`` nearest doc ids (best first), never ``exclude``."""
        similarity, doc_ids, _ = self.similarity(queries)
        if exclude is not None:
            similarity[:, doc_ids == exclude] = -np.inf
        return ranked(similarity, doc_ids, limit)[0].tolist()
