"""Codes that follow the embeddings table (``saedb encode``), as an index follows its table.

A document is pending for a model when it has embeddings and the model has no record of coding
it (``Backend.coded_table``: DuckDB's coded_documents, with the content hash each document was
coded from; Postgres's sae_codes). A document is changed when that record no longer matches the
table: removed (both backends) or rewritten (DuckDB, by content hash; on Postgres a rewritten
vector is not seen here). An encode first forgets every changed document of the model (its codes,
its record, its share of the co-occurrence counts) in one transaction, then codes every pending
one: each batch is read, encoded with the numpy reference and written in one publishing
transaction, its co-occurrence counts added where the model has them, so a run is resumable
(kill it, run it again) and idempotent. ``n_documents`` is the model's documents after the run.

On DuckDB, sae_codes refuses to be read while any model's records differ from the table
(schema.sql: code_status), so no count, view or label example describes rows that are gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from saedb.backends import Backend
from saedb.errors import require_at_least_one
from saedb.models import ready_models

PENDING = "FROM embeddings e WHERE NOT EXISTS (SELECT 1 FROM {coded} c WHERE c.model_id = ? AND c.doc_id = e.doc_id)"
# One batch, re-read inside the publishing lock: both sides restricted to the batch's doc id
# range, so a batch reads its own slice of the records, not all of them (at 1M documents and
# 100k new ones, a whole-table anti-join per batch made the encode quadratic).
PENDING_IN_RANGE = """
SELECT e.doc_id, e.embedding FROM embeddings e
WHERE e.doc_id BETWEEN ? AND ?
  AND NOT EXISTS (SELECT 1 FROM {coded} c WHERE c.model_id = ? AND c.doc_id BETWEEN ? AND ? AND c.doc_id = e.doc_id)
ORDER BY e.doc_id
"""
# Documents each pair of features fires on together, among some documents (families.COOCCURRENCE_SQL's pairs).
PAIRS = """
SELECT a.feature_id AS i, b.feature_id AS j, count(*) AS n FROM {codes} a
JOIN {codes} b ON b.model_id = a.model_id AND b.doc_id = a.doc_id AND b.feature_id >= a.feature_id
WHERE a.model_id = ? AND a.doc_id IN (SELECT unnest(?::BIGINT[])) GROUP BY a.feature_id, b.feature_id
"""


@dataclass(frozen=True)
class EncodeReport:
    encoded: int  # documents that got codes
    without_features: int  # documents on which no feature fires
    skipped: list[tuple[str | None, str]] = field(default_factory=list)  # an attached table's rows that break its rules
    forgotten: int = 0  # documents removed or rewritten since they were coded: their codes were removed first


def pending_documents(backend: Backend, model_id: int) -> int:
    return int(backend.query(f"SELECT count(*) {PENDING.format(coded=backend.coded_table)}", (model_id,))[0][0])


def shift_cooccurrence(backend: Backend, model_id: int, doc_ids: np.ndarray, sign: int) -> None:
    """Add (``sign`` 1) or take away (-1) these documents' pairs in the model's co-occurrence
    counts, where the model has them (saedb families made them); a pair at 0 is removed."""
    if not len(doc_ids) or not backend.query("SELECT 1 FROM feature_cooccurrence WHERE model_id = ? LIMIT 1", (model_id,)):
        return
    pairs, ids = PAIRS.format(codes=backend.codes_table), doc_ids.astype(np.int64).tolist()
    backend.execute(f"UPDATE feature_cooccurrence SET n_docs = n_docs + ? * d.n FROM ({pairs}) d "
                    "WHERE feature_cooccurrence.model_id = ? AND feature_i = d.i AND feature_j = d.j", (sign, model_id, ids, model_id))
    if sign > 0:
        backend.execute(f"INSERT INTO feature_cooccurrence (model_id, feature_i, feature_j, n_docs) SELECT ?, d.i, d.j, d.n FROM ({pairs}) d "
                        "WHERE NOT EXISTS (SELECT 1 FROM feature_cooccurrence f WHERE f.model_id = ? AND f.feature_i = d.i AND f.feature_j = d.j)",
                        (model_id, model_id, ids, model_id))
    else:
        backend.execute("DELETE FROM feature_cooccurrence WHERE model_id = ? AND n_docs <= 0", (model_id,))


def count_documents(backend: Backend, model_id: int, change: int) -> None:
    """Add ``change`` to the model's n_documents: every document coded where the backend records
    them all (DuckDB, as publish_model counts), those with an active feature where the codes are
    the record (Postgres)."""
    backend.execute("UPDATE sae_models SET n_documents = coalesce(n_documents, 0) + ? WHERE model_id = ?", (change, model_id))


def forget_changed_documents(backend: Backend, model_id: int) -> int:
    """Remove the codes, records and co-occurrence share of every document of the model that was
    removed or rewritten since it was coded, in one transaction; returns how many."""
    with backend.publishing():
        changed = np.array([r[0] for r in backend.query(backend.changed_documents_sql, (model_id,))], dtype=np.int64)
        if len(changed):
            shift_cooccurrence(backend, model_id, changed, -1)
            for table in dict.fromkeys((backend.codes_table, backend.coded_table)):
                backend.execute(f"DELETE FROM {table} WHERE model_id = ? AND doc_id IN (SELECT unnest(?::BIGINT[]))",
                                (model_id, changed.tolist()))
            count_documents(backend, model_id, -len(changed))
    return len(changed)


def encode_new_documents(backend: Backend, model_id: int, batch_size: int = 4096,
                         progress: Callable[[int], None] = lambda n: None) -> EncodeReport:
    """Bring the model's codes to the table: forget changed documents, then code every pending
    one; ``progress(n)`` after each batch."""
    require_at_least_one(batch_size=batch_size)
    skipped = backend.sync_documents()
    sae = backend.load_sae(model_id)
    forgotten = forget_changed_documents(backend, model_id)
    coded = backend.coded_table
    pending = np.array([r[0] for r in backend.query(f"SELECT e.doc_id {PENDING.format(coded=coded)} ORDER BY e.doc_id", (model_id,))],
                       dtype=np.int64)
    encoded = without = 0
    with backend.bulk_writes():
        for start in range(0, len(pending), batch_size):
            first, last = int(pending[start]), int(pending[min(start + batch_size, len(pending)) - 1])
            with backend.publishing():  # one writer of codes at a time: a batch is re-read inside the lock
                batch = backend.arrow(PENDING_IN_RANGE.format(coded=coded), (first, last, model_id, first, last))
                if not batch.num_rows:
                    continue
                doc_ids = np.asarray(batch.column("doc_id").to_pylist(), dtype=np.int64)
                codes = sae.encode(np.asarray(batch.column("embedding").to_pylist(), dtype=np.float32))
                backend.copy_codes(model_id, doc_ids, codes)
                shift_cooccurrence(backend, model_id, doc_ids, 1)
                active = int(codes.active_mask().any(axis=1).sum())
                count_documents(backend, model_id, active if coded == backend.codes_table else len(doc_ids))
            encoded, without = encoded + active, without + len(doc_ids) - active
            progress(len(doc_ids))
    return EncodeReport(encoded, without, skipped, forgotten)


def encode_every_model(backend: Backend, batch_size: int = 4096) -> dict[int, EncodeReport]:
    """``encode_new_documents`` for every published model: what a load runs, as a table's write
    keeps every index of it in step."""
    return {model_id: encode_new_documents(backend, model_id, batch_size) for model_id in ready_models(backend)}
