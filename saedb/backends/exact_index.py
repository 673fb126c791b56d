"""Exact nearest neighbours over a DuckDB database's own embeddings, in process.

DuckDB scans FLOAT[d] arrays with ``array_cosine_distance`` at about 1 µs per row; the same
exact ranking from a cached float32 matrix and one BLAS product is 5-10 times faster. The
cache is checked before every search against (count, max, sum) of the embeddings' doc ids:
rows added after the last search are appended, any other change reloads the matrix. An
embedding overwritten in place with its doc id kept (which saedb's loader never does) is only
seen after reconnecting.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

Stamp = tuple[int, int, int]
STAMP_SQL = "SELECT count(*), coalesce(max(doc_id), 0), coalesce(sum(doc_id), 0) FROM embeddings"


class ExactIndex:
    """Unit-normalised embedding rows and their doc ids, kept in step with the table."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stamp: Stamp = (0, 0, 0)
        self.doc_ids = np.zeros(0, np.int64)
        self.unit_rows = np.zeros((0, 0), np.float32)

    def refresh(self, stamp: Stamp, read: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> None:
        """Bring the cache to the table's ``stamp``; ``read(after)`` returns the (doc_ids, vectors)
        with doc_id > after, in doc id order."""
        with self.lock:
            if stamp == self.stamp:
                return
            count, last, total = self.stamp
            ids, vectors = read(last)
            if (count + len(ids), int(ids[-1]) if len(ids) else last, total + int(ids.sum())) != stamp:
                self.doc_ids, self.unit_rows = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)  # not an append
                ids, vectors = read(0)
            if len(ids):
                unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                self.doc_ids = np.concatenate([self.doc_ids, ids])
                self.unit_rows = np.ascontiguousarray(np.concatenate([self.unit_rows, unit]) if len(self.unit_rows) else unit, np.float32)
            self.stamp = (len(self.doc_ids), int(self.doc_ids[-1]) if len(self.doc_ids) else 0, int(self.doc_ids.sum()))

    def nearest(self, query: np.ndarray, limit: int, allowed: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` nearest doc ids (among ``allowed``, if given) and their cosine distances,
        nearest first (ties by doc id)."""
        with self.lock:
            similarity = self.unit_rows @ (np.asarray(query, np.float32) / np.linalg.norm(query)) if len(self.doc_ids) else None
            doc_ids = self.doc_ids
        if similarity is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is not None:
            keep = np.isin(doc_ids, np.asarray(allowed, dtype=np.int64))
            doc_ids, similarity = doc_ids[keep], similarity[keep]
        limit = min(limit, len(doc_ids))
        if not limit:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        best = np.argpartition(-similarity, limit - 1)[:limit]
        order = np.lexsort((doc_ids[best], -similarity[best]))
        return doc_ids[best[order]], (1.0 - similarity[best[order]]).astype(np.float32)
