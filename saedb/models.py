"""Model versions: publish an SAE's weights and every document's codes atomically."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from saedb.backends import Backend
from saedb.errors import InvalidInputError, UnknownModelError
from saedb.holdout import held_out, holdout_split
from saedb.sae import SAE

CODES_BATCH = 8192


def resolve_model(backend: Backend, model: int | str) -> int:
    """A published model's id (an int or a string of digits), or the latest published version of a
    model name; UnknownModelError when no published model has that id or name."""
    if isinstance(model, int) or model.isdigit():
        return int(backend.model_row(int(model))["model_id"])  # UnknownModelError for an id never published
    found = backend.query("SELECT max(model_id) FROM sae_models WHERE name = ? AND status = 'ready'", (model,))[0][0]
    if found is None:
        raise UnknownModelError(f"no published model named {model!r}")
    return int(found)


def ready_models(backend: Backend) -> list[int]:
    """The published models' ids, oldest first."""
    return [int(r[0]) for r in backend.query("SELECT model_id FROM sae_models WHERE status = 'ready' ORDER BY model_id")]


def publish_model(backend: Backend, sae: SAE, name: str, metrics: dict[str, Any] | None = None) -> int:
    """Write ``sae`` as the next version of ``name`` with the codes of every document.

    Everything happens in one transaction: readers see either the previous state or the
    complete new version (status 'ready'), never a partial one. The documents the trainer held
    out (``metrics["config"]``: holdout_fraction and seed) are listed in ``model_holdout``.
    Returns the model_id.
    """
    embedder, dim = backend.require_embedder()
    if sae.d != dim:
        raise InvalidInputError(f"model has input dimension {sae.d} but the database embeddings are {dim}-d")
    if not name or not name.strip():
        raise InvalidInputError("model name is empty")
    split = holdout_split(metrics)
    with backend.publishing():
        model_id = backend.insert_model_row(name.strip(), sae, embedder, metrics or {})
        backend.copy_weights(model_id, sae)
        n_documents = 0
        for doc_ids, embeddings in backend.iter_embeddings(CODES_BATCH):
            backend.copy_codes(model_id, doc_ids, sae.encode(embeddings))
            if split is not None:
                held = doc_ids[held_out(doc_ids, *split)].astype(np.int64)
                backend.insert_rows("model_holdout", pa.table({"model_id": pa.array(np.full(len(held), model_id, np.int32)),
                                                               "doc_id": pa.array(held)}))
            n_documents += len(doc_ids)
        backend.execute("UPDATE sae_models SET status = 'ready', n_documents = ? WHERE model_id = ?", (n_documents, model_id))
    return model_id


def drop_model(backend: Backend, model: int | str) -> list[int]:
    """Remove a model version (an id, or a name's latest version) and everything that belongs to
    it, its untrained control with it, in one transaction: weights, codes, held-out split, labels
    and their controls, co-occurrence, families, evaluations and feature matches either way.
    Returns the model ids removed. An id may be of any status (a retired version too)."""
    if isinstance(model, int) or model.isdigit():
        model_id = int(model)
        if not backend.query("SELECT count(*) FROM sae_models WHERE model_id = ?", (model_id,))[0][0]:
            raise UnknownModelError(f"unknown model {model_id} (no model with that id)")
    else:
        model_id = resolve_model(backend, model)
    with backend.publishing():
        dropped = [model_id, *(r[0] for r in backend.query("SELECT model_id FROM sae_models WHERE control_of = ?", (model_id,)))]
        marks = ", ".join("?" * len(dropped))
        backend.execute(f"DELETE FROM eval_results WHERE run_id IN (SELECT run_id FROM eval_runs WHERE model_id IN ({marks}))", dropped)
        for table in backend.model_tables:
            backend.execute(f"DELETE FROM {table} WHERE model_id IN ({marks})", dropped)
        backend.execute(f"DELETE FROM feature_matches WHERE model_id IN ({marks}) OR other_model_id IN ({marks})", dropped * 2)
        backend.execute(f"DELETE FROM sae_models WHERE model_id IN ({marks})", dropped)
    return dropped
