"""Examples for one feature, drawn from SQL: what the interpreter sees and what the
predictor is scored on (held out from the interpreter)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from saedb.backends import Backend

SHOWN, HELD_OUT = 5, 3


@dataclass(frozen=True)
class FeatureExamples:
    feature_id: int
    density: float
    positives: list[str]  # the 5 top-activating abstracts
    negatives: list[str]  # 5 random abstracts where the feature does not fire
    held_out_positives: list[str]  # 3 more activating abstracts
    held_out_negatives: list[str]  # 3 more non-activating abstracts

    def held_out(self) -> tuple[list[str], list[int]]:
        """Held-out texts and their truth (1 fires, 0 does not)."""
        texts = self.held_out_positives + self.held_out_negatives
        return texts, [1] * len(self.held_out_positives) + [0] * len(self.held_out_negatives)


def document_text(title: str, abstract: str) -> str:
    return f"{title}. {abstract}"


def feature_examples(backend: Backend, model_id: int, feature_id: int, n_documents: int, seed: int = 0) -> FeatureExamples | None:
    """Examples for a feature, or None when it fires on too few documents to hold any out."""
    rng = random.Random(seed * 1_000_003 + feature_id)
    active = backend.query(
        "SELECT p.title, p.abstract FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id "
        "WHERE c.model_id = ? AND c.feature_id = ? ORDER BY c.activation DESC, c.doc_id LIMIT 50",
        (model_id, feature_id),
    )
    n_active = int(backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ? AND feature_id = ?", (model_id, feature_id))[0][0])
    if len(active) < SHOWN + HELD_OUT:
        return None
    # Random documents by doc_id probe; the feature must not fire on them.
    probe = backend.query(
        "SELECT p.title, p.abstract FROM papers p JOIN embeddings e ON e.doc_id = p.doc_id "
        "WHERE NOT EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = ? AND c.feature_id = ? AND c.doc_id = p.doc_id) "
        "ORDER BY (p.doc_id * 2654435761 + ?) % 1000003 LIMIT ?",
        (model_id, feature_id, rng.randrange(1_000_003), SHOWN + HELD_OUT),
    )
    texts = [document_text(t, a) for t, a in active]
    held = rng.sample(texts[SHOWN:], HELD_OUT)
    negatives = [document_text(t, a) for t, a in probe]
    return FeatureExamples(
        feature_id=feature_id,
        density=n_active / max(n_documents, 1),
        positives=texts[:SHOWN],
        negatives=negatives[:SHOWN],
        held_out_positives=held,
        held_out_negatives=negatives[SHOWN:],
    )
