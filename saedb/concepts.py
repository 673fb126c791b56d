"""Concept -> feature: the one rule behind the demo's concept, the web app's "add concept" box,
``sae_feature_by_label`` and ``steer_label`` (SQL, both backends).

1. A feature whose offered label (``feature_best_labels``) is the text, case-insensitively.
2. Else, where the database's embedder runs here: the feature whose decoder row is closest
   (cosine) to the text's embedding: the direction steering would move a query along.
3. Else (Postgres' SQL has no embedder): the offered label containing the text.

Ties among labels go to clean labels first, then the label's own decoder cosine (its round
trip, ``saedb.interp.roundtrip``), then Pearson, then the lower feature id. An untrained control
model (``sae_models.control_of``) is never offered: steering needs a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from saedb.backends.base import Backend
from saedb.embedders import Embedder
from saedb.errors import InvalidInputError

# Parameters: model, text; the same ordering as Postgres' sae_feature_by_label.
LABEL_MATCH_SQL = """
SELECT feature_id FROM feature_best_labels
WHERE model_id = ? AND {match}
ORDER BY clean DESC, decoder_cosine DESC NULLS LAST, pearson DESC NULLS LAST, feature_id LIMIT 1
"""
EXACT = "lower(label) = lower(?)"
CONTAINS = "strpos(lower(label), lower(?)) > 0"


@dataclass(frozen=True)
class ConceptMatch:
    feature_id: int
    by: str  # "label", "decoder cosine" or "label containing the text"


def check_steerable(backend: Backend, model_id: int, fn: str = "steer_label") -> None:
    """InvalidInputError for a model that is an untrained control."""
    control_of = backend.query("SELECT control_of FROM sae_models WHERE model_id = ?", (model_id,))
    if control_of and control_of[0][0] is not None:
        raise InvalidInputError(f"{fn}: model {model_id} is the untrained control of model {control_of[0][0]}; "
                                "steer with a trained model")


def concept_feature(backend: Backend, model_id: int, text: str,
                    embed: Callable[[str], np.ndarray] | None, decoder: np.ndarray | None = None) -> ConceptMatch:
    """The feature for a concept by the module's rule (``embed``: the database's embedder, None
    where it cannot run; ``decoder``: the model's decoder rows when the caller has them)."""
    check_steerable(backend, model_id)
    needle = text.strip()
    if not needle:
        raise InvalidInputError("steer_label: label is empty")
    exact = backend.query(LABEL_MATCH_SQL.format(match=EXACT), (model_id, needle))
    if exact:
        return ConceptMatch(int(exact[0][0]), "label")
    if embed is not None:
        rows = backend.decoder(model_id) if decoder is None else decoder
        vector = np.asarray(embed(needle), dtype=np.float32).ravel()
        cosine = rows @ vector / np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(vector), 1e-12)
        return ConceptMatch(int(np.argmax(cosine)), "decoder cosine")
    contained = backend.query(LABEL_MATCH_SQL.format(match=CONTAINS), (model_id, needle))
    if contained:
        return ConceptMatch(int(contained[0][0]), "label containing the text")
    raise InvalidInputError(f"steer_label: no feature of model {model_id} is labelled like {needle!r}")


HOW_FOUND = {"decoder cosine": "the feature whose decoder row is nearest its embedding",
             "label containing the text": "the feature whose label contains it"}


def steering_note(backend: Backend, model_id: int, text: str, embedder: Embedder) -> tuple[str, bool]:
    """(One line naming the feature a search steered by the label ``text`` moves along, whether
    a label is the text) by the SQL functions' rule: DuckDB's embed a text no label is (with
    ``embedder``, the database's), Postgres' SQL cannot; the line says how it was found otherwise."""
    embed = (lambda t: embedder.embed([t])[0]) if backend.dialect == "duckdb" else None
    match = concept_feature(backend, model_id, text, embed)
    labels = backend.query("SELECT label FROM feature_best_labels WHERE model_id = ? AND feature_id = ?", (model_id, match.feature_id))
    note = f"steering along feature {match.feature_id}, labelled {labels[0][0] if labels else None!r}"
    if match.by == "label":
        return note, True
    return f"{note}: no label is {text.strip()!r}, so {HOW_FOUND[match.by]}", False
