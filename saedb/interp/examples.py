"""Examples for one feature, drawn from SQL, split as in the paper (paper-notes §3.1):

- shown to the interpreter: the 5 top-activating abstracts (with activations) and 5
  abstracts where the feature does not fire;
- held out for the predictor: the activating abstracts ranked 6-8 and 3 more
  non-activating ones, never shown to the interpreter;
- ``more_positives``: activating abstracts ranked 9-``POOL``, for labellers that read more
  than 5 examples (the offline labeller); disjoint from the held-out ones.

Deviation: non-activating abstracts are a seeded random sample, not the first ones in
corpus order (a quirk of the paper's code); the paper's Pearson depends on that choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from saedb.backends import Backend

SHOWN, HELD_OUT, POOL = 5, 3, 60


@dataclass(frozen=True)
class FeatureExamples:
    feature_id: int
    density: float
    positives: list[str]  # the 5 top-activating abstracts
    activations: list[float]  # their activations
    negatives: list[str]  # 5 random abstracts where the feature does not fire
    held_out_positives: list[str]  # activating abstracts ranked 6-8
    held_out_negatives: list[str]  # 3 more non-activating abstracts
    more_positives: list[str]  # activating abstracts ranked 9 and below
    more_activations: list[float]  # their activations

    def held_out(self) -> tuple[list[str], list[int]]:
        """Held-out texts and their truth (1 fires, 0 does not)."""
        texts = self.held_out_positives + self.held_out_negatives
        return texts, [1] * len(self.held_out_positives) + [0] * len(self.held_out_negatives)


def document_text(title: str, abstract: str) -> str:
    return f"{title}. {abstract}"


def random_inactive_documents(backend: Backend, model_id: int, features: list[int], count: int, rng: random.Random) -> list[str]:
    """``count`` random abstracts on which none of ``features`` fires (a seeded hash order)."""
    marks = ", ".join("?" * len(features))
    rows = backend.query(
        "SELECT p.title, p.abstract FROM papers p JOIN embeddings e ON e.doc_id = p.doc_id "
        f"WHERE NOT EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = ? AND c.feature_id IN ({marks}) AND c.doc_id = p.doc_id) "
        "ORDER BY (p.doc_id * 2654435761 + ?) % 1000003, p.doc_id LIMIT ?",
        (model_id, *features, rng.randrange(1_000_003), count),
    )
    return [document_text(t, a) for t, a in rows]


def feature_examples(backend: Backend, model_id: int, feature_id: int, n_documents: int, seed: int = 0) -> FeatureExamples | None:
    """Examples for a feature, or None when it fires on too few documents to hold any out."""
    rng = random.Random(seed * 1_000_003 + feature_id)
    active = backend.query(
        "SELECT p.title, p.abstract, c.activation FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id "
        "WHERE c.model_id = ? AND c.feature_id = ? ORDER BY c.activation DESC, c.doc_id LIMIT ?",
        (model_id, feature_id, POOL),
    )
    if len(active) < SHOWN + HELD_OUT:
        return None
    n_active = int(backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ? AND feature_id = ?", (model_id, feature_id))[0][0])
    texts = [document_text(t, a) for t, a, _ in active]
    negatives = random_inactive_documents(backend, model_id, [feature_id], SHOWN + HELD_OUT, rng)
    return FeatureExamples(
        feature_id=feature_id,
        density=n_active / max(n_documents, 1),
        positives=texts[:SHOWN],
        activations=[float(a) for _, _, a in active[:SHOWN]],
        negatives=negatives[:SHOWN],
        held_out_positives=texts[SHOWN : SHOWN + HELD_OUT],
        held_out_negatives=negatives[SHOWN:],
        more_positives=texts[SHOWN + HELD_OUT :],
        more_activations=[float(a) for _, _, a in active[SHOWN + HELD_OUT :]],
    )
