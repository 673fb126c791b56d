"""Every paper's (doc_id, arxiv_id, title, year) in memory, for a read-only DuckDB instance
and for a writable one's snapshots.

A search reads its hits' papers in one DuckDB statement: 1.3–2.3 ms at 1M papers, as long as
the HNSW search itself; from memory, 0.07–0.12 ms. On a read-only instance no process can
change the file while it is open (DuckDB's file lock), so those rows can be held in memory
without ever going stale.

Rules:
- On a writable instance only inside ``snapshot()`` (a read-only transaction), read
  synchronously with the papers' stamp (PAPERS_STAMP_SQL) in that transaction and kept beside it
  for the next snapshot whose papers have the same stamp: outside one, a row can change between
  two searches.
- Loaded once, by a background thread on its own cursor, started by the first search (or
  ``prepare_search``); until ``ready`` is set, searches read DuckDB as before. Nothing waits.
- Held as Arrow columns sorted by doc id, in one chunk (``take`` on a chunked table copies
  every chunk: 10 ms at 1M), looked up by binary search: 105 MB and 0.3 s to load at 1M papers.
- A load that fails leaves ``ready`` unset and keeps its error in ``failure``: searches go on
  reading DuckDB. ``stop`` interrupts a load in flight, before its database closes.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import duckdb
import numpy as np
import pyarrow as pa

PAPER_ROWS_SQL = "SELECT doc_id, arxiv_id, title, year FROM papers ORDER BY doc_id"
PAPERS_STAMP_SQL = "SELECT count(*), sum(hash(doc_id, arxiv_id, title, year)::HUGEINT) FROM papers"
STOP_POLL_S = 0.05  # how often stop() interrupts a load that has not ended yet


class PaperTable:
    """Papers' rows held as Arrow columns sorted by doc id, looked up by binary search."""

    def __init__(self, rows: pa.Table) -> None:
        self.rows = rows.combine_chunks()
        self.doc_ids = self.rows.column(0).to_numpy().astype(np.int64) if self.rows.num_rows else np.zeros(0, np.int64)

    def rows_of(self, doc_ids: np.ndarray) -> dict[int, tuple[Any, ...]]:
        """doc_id -> (doc_id, arxiv_id, title, year) of those of ``doc_ids`` that are papers."""
        if not len(self.doc_ids) or not len(doc_ids):
            return {}
        positions = np.minimum(np.searchsorted(self.doc_ids, doc_ids), len(self.doc_ids) - 1)
        positions = positions[self.doc_ids[positions] == doc_ids]
        taken = self.rows.take(pa.array(positions))
        return {row[0]: row for row in zip(*(column.to_pylist() for column in taken.columns))}

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.doc_ids.nbytes


class PaperRows:
    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection]) -> None:
        """``cursor()``: a connection of the database's own, closed only after ``stop`` (not a
        backend's cursor, which its backend may close while the load runs)."""
        self._new_cursor = cursor
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._stopped = False
        self._table = PaperTable(pa.table({}))

    def start(self) -> None:
        """Load the rows in the background on a cursor of their own, unless started (or stopped) before."""
        with self._lock:
            if self._thread is not None or self._stopped:
                return
            self._cursor = self._new_cursor()
            self._thread = threading.Thread(target=self._load, name="saedb-paper-rows", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        assert self._cursor is not None
        try:
            self._table = PaperTable(self._cursor.sql(PAPER_ROWS_SQL).to_arrow_table())
            self.ready.set()
        except Exception as exc:  # interrupted by stop, or a failed read: searches keep reading DuckDB
            self.failure = exc
        finally:
            self._cursor.close()

    def rows_of(self, doc_ids: np.ndarray) -> dict[int, tuple[Any, ...]]:
        """doc_id -> (doc_id, arxiv_id, title, year) of those of ``doc_ids`` that are papers; only once ``ready``."""
        return self._table.rows_of(doc_ids)

    @property
    def nbytes(self) -> int:
        """Memory held by the loaded rows."""
        return self._table.nbytes

    def stop(self) -> None:
        """Interrupt a load in flight and wait for its thread; no load starts afterwards."""
        with self._lock:
            self._stopped = True
            thread, cursor = self._thread, self._cursor
        while thread is not None and thread.is_alive():
            try:  # again until it ends: an interrupt that comes before the query starts is lost
                cursor.interrupt()  # type: ignore[union-attr]
            except duckdb.Error:  # the load had finished and closed it
                pass
            thread.join(STOP_POLL_S)
