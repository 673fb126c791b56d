"""Codes for documents that arrived after a model version was published (``saedb encode``).

A document is pending for a model when it has embeddings and no codes for that model. Each
batch is read, encoded with the numpy reference and written in one publishing transaction,
so a run is resumable (kill it, run it again) and idempotent (two runs never write a
document twice). A document on which no feature fires has no codes to write; it is counted
and checked again on the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from saedb.backends import Backend
from saedb.errors import require_at_least_one

PENDING = "FROM embeddings e WHERE NOT EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = ? AND c.doc_id = e.doc_id)"
# One batch, re-read inside the publishing lock: both sides restricted to the batch's doc id
# range, so a batch reads its own slice of sae_codes, not all of it (at 1M documents and
# 100k new ones, a whole-table anti-join per batch made the encode quadratic).
PENDING_IN_RANGE = """
SELECT e.doc_id, e.embedding FROM embeddings e
WHERE e.doc_id BETWEEN ? AND ?
  AND NOT EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = ? AND c.doc_id BETWEEN ? AND ? AND c.doc_id = e.doc_id)
ORDER BY e.doc_id
"""


@dataclass(frozen=True)
class EncodeReport:
    encoded: int  # documents that got codes
    without_features: int  # documents on which no feature fires
    skipped: list[tuple[str | None, str]] = field(default_factory=list)  # an attached table's rows that break its rules


def pending_documents(backend: Backend, model_id: int) -> int:
    return int(backend.query(f"SELECT count(*) {PENDING}", (model_id,))[0][0])


def encode_new_documents(backend: Backend, model_id: int, batch_size: int = 4096,
                         progress: Callable[[int], None] = lambda n: None) -> EncodeReport:
    """Write the codes of every pending document for ``model_id``; ``progress(n)`` after each batch."""
    require_at_least_one(batch_size=batch_size)
    skipped = backend.sync_documents()
    sae = backend.load_sae(model_id)
    pending = np.array([r[0] for r in backend.query(f"SELECT e.doc_id {PENDING} ORDER BY e.doc_id", (model_id,))], dtype=np.int64)
    encoded = without = 0
    with backend.bulk_writes():
        for start in range(0, len(pending), batch_size):
            first, last = int(pending[start]), int(pending[min(start + batch_size, len(pending)) - 1])
            with backend.publishing():  # one writer of codes at a time: a batch is re-read inside the lock
                batch = backend.arrow(PENDING_IN_RANGE, (first, last, model_id, first, last))
                if not batch.num_rows:
                    continue
                doc_ids = np.asarray(batch.column("doc_id").to_pylist(), dtype=np.int64)
                codes = sae.encode(np.asarray(batch.column("embedding").to_pylist(), dtype=np.float32))
                backend.copy_codes(model_id, doc_ids, codes)
                active = int(codes.active_mask().any(axis=1).sum())
                backend.execute("UPDATE sae_models SET n_documents = coalesce(n_documents, 0) + ? WHERE model_id = ?", (active, model_id))
            encoded, without = encoded + active, without + len(doc_ids) - active
            progress(len(doc_ids))
    return EncodeReport(encoded, without, skipped)
