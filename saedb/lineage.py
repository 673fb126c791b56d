"""Feature lineage across model versions (the paper's §7): each feature's best match in the other
model by the cosine of unit decoder rows, in both directions, stored in ``feature_matches``; the
``feature_lineage`` view adds mutual matches, splits (a feature of one model that several of the
other's have as their best match), orphans and carried labels, ``model_matches`` the paper's
mean max-cosine per direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from saedb.backends import Backend
from saedb.errors import InvalidInputError
from saedb.sae import unit_rows

CHUNK_ROWS = 2048  # source rows per matrix product: 2048 x 12288 float32 = 100 MB


def best_matches(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``source``: the index of the row of ``target`` with the highest cosine
    (the lowest index among ties) and that cosine."""
    source, target = unit_rows(source), unit_rows(target)
    index = np.empty(len(source), dtype=np.int32)
    cosine = np.empty(len(source), dtype=np.float64)
    for start in range(0, len(source), CHUNK_ROWS):
        block = source[start:start + CHUNK_ROWS] @ target.T
        index[start:start + len(block)] = block.argmax(axis=1)
        cosine[start:start + len(block)] = block[np.arange(len(block)), index[start:start + len(block)]]
    return index, np.clip(cosine, -1.0, 1.0)


def match_models(backend: Backend, model_a: int, model_b: int) -> list[dict[str, Any]]:
    """Store both directions' best matches of two published models (a rerun replaces them) and
    return their ``model_matches`` rows, A toward B first."""
    if model_a == model_b:
        raise InvalidInputError(f"match two different models (both are {model_a})")
    for model in (model_a, model_b):
        backend.model_row(model)  # UnknownModelError; a database's models all read its embedder's vectors
    decoders = {model: backend.decoder(model) for model in (model_a, model_b)}
    with backend.transaction():
        backend.execute("DELETE FROM feature_matches WHERE (model_id = ? AND other_model_id = ?) OR (model_id = ? AND other_model_id = ?)",
                        (model_a, model_b, model_b, model_a))
        for model, other in ((model_a, model_b), (model_b, model_a)):
            index, cosine = best_matches(decoders[model], decoders[other])
            backend.insert_rows("feature_matches", pa.table({
                "model_id": pa.array(np.full(len(index), model, dtype=np.int32)),
                "feature_id": pa.array(np.arange(len(index), dtype=np.int32)),
                "other_model_id": pa.array(np.full(len(index), other, dtype=np.int32)),
                "other_feature_id": pa.array(index),
                "cosine": pa.array(cosine),
            }))
    summary = backend.arrow("SELECT * FROM model_matches WHERE (model_id = ? AND other_model_id = ?) OR (model_id = ? AND other_model_id = ?)",
                            (model_a, model_b, model_b, model_a)).to_pylist()
    return sorted(summary, key=lambda row: row["model_id"] != model_a)
