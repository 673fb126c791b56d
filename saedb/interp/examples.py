"""Examples for one feature, drawn from SQL, split as in the paper (paper-notes §3.1):

- shown to the interpreter: the 5 top-activating abstracts (with activations) and 5
  abstracts where the feature does not fire;
- held out for the predictor: the activating abstracts ranked 6-8 and 3 more
  non-activating ones, never shown to the interpreter;
- ``more_positives``: activating abstracts ranked 9-``POOL``, for labellers that read more
  than 5 examples (the offline labeller); disjoint from the held-out ones.

Deviation: non-activating abstracts are a seeded random sample (from a pool of
``NEGATIVE_POOL`` random documents shared by all features of a run), not the first ones
in corpus order (a quirk of the paper's code); the paper's Pearson depends on that choice.

Cost: one query per ``EXAMPLES_BATCH`` features plus two for the pool, so labelling 1024
features of a 1M-document model reads sae_codes 16 times, not 3072.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from saedb.backends import Backend

SHOWN, HELD_OUT, POOL = 5, 3, 60
NEGATIVE_POOL = 1000  # random documents that non-activating examples are drawn from
EXAMPLES_BATCH = 64  # features whose top activations one query reads


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


TOP_ACTIVATIONS_SQL = """
SELECT t.feature_id, p.title, p.abstract, t.activation, t.n_active FROM (
    SELECT feature_id, doc_id, activation, count(*) OVER (PARTITION BY feature_id) AS n_active,
           row_number() OVER (PARTITION BY feature_id ORDER BY activation DESC, doc_id) AS rank
    FROM sae_codes WHERE model_id = ? AND feature_id IN ({marks})
) t JOIN papers p ON p.doc_id = t.doc_id
WHERE t.rank <= ? ORDER BY t.feature_id, t.rank
"""


@dataclass(frozen=True)
class NegativePool:
    """``NEGATIVE_POOL`` random documents (a seeded hash order) and the features that fire on
    each: every feature draws its non-activating examples from them, so a run reads the
    corpus once for negatives instead of once per feature."""

    texts: list[str]
    firing: list[set[int]]

    @classmethod
    def load(cls, backend: Backend, model_id: int, seed: int) -> "NegativePool":
        salt = random.Random(seed).randrange(1_000_003)
        rows = backend.query(
            "SELECT p.doc_id, p.title, p.abstract FROM papers p JOIN embeddings e ON e.doc_id = p.doc_id "
            "ORDER BY (p.doc_id * 2654435761 + ?) % 1000003, p.doc_id LIMIT ?", (salt, NEGATIVE_POOL))
        position = {doc_id: i for i, (doc_id, _, _) in enumerate(rows)}
        firing: list[set[int]] = [set() for _ in rows]
        if rows:
            for doc_id, feature_id in backend.query(
                f"SELECT doc_id, feature_id FROM sae_codes WHERE model_id = ? AND doc_id IN ({', '.join('?' * len(rows))})",
                (model_id, *position),
            ):
                firing[position[doc_id]].add(int(feature_id))
        return cls([document_text(t, a) for _, t, a in rows], firing)

    def sample(self, feature_id: int, count: int, rng: random.Random) -> list[str] | None:
        """``count`` random pool documents on which the feature does not fire (None: too few)."""
        quiet = [text for text, fired in zip(self.texts, self.firing) if feature_id not in fired]
        return rng.sample(quiet, count) if len(quiet) >= count else None


def examples_for(backend: Backend, model_id: int, features: list[int], n_documents: int,
                 seed: int = 0) -> Iterator[FeatureExamples]:
    """Examples of each feature (skipping those that fire on too few documents to hold any
    out), ``EXAMPLES_BATCH`` features per pass over sae_codes; a feature's examples depend on
    the seed only, not on the features batched with it."""
    pool = NegativePool.load(backend, model_id, seed)
    for start in range(0, len(features), EXAMPLES_BATCH):
        batch = features[start : start + EXAMPLES_BATCH]
        active: dict[int, list[tuple[str, float]]] = {f: [] for f in batch}
        n_active: dict[int, int] = {}
        for feature_id, title, abstract, activation, count in backend.query(
            TOP_ACTIVATIONS_SQL.format(marks=", ".join("?" * len(batch))), (model_id, *batch, POOL)
        ):
            active[feature_id].append((document_text(title, abstract), float(activation)))
            n_active[feature_id] = int(count)
        for feature_id in batch:
            if len(active[feature_id]) >= SHOWN + HELD_OUT:
                yield feature_examples(backend, model_id, feature_id, active[feature_id],
                                       n_active[feature_id] / max(n_documents, 1), pool, seed)


def feature_examples(backend: Backend, model_id: int, feature_id: int, active: list[tuple[str, float]],
                     density: float, pool: NegativePool, seed: int) -> FeatureExamples:
    """Split a feature's top activations (text, activation; best first) as in the paper and
    draw its non-activating examples from the pool (from the whole corpus when the feature
    fires on nearly all of the pool)."""
    rng = random.Random(seed * 1_000_003 + feature_id)
    negatives = pool.sample(feature_id, SHOWN + HELD_OUT, rng) \
        or random_inactive_documents(backend, model_id, [feature_id], SHOWN + HELD_OUT, rng)
    texts = [text for text, _ in active]
    return FeatureExamples(
        feature_id=feature_id,
        density=density,
        positives=texts[:SHOWN],
        activations=[a for _, a in active[:SHOWN]],
        negatives=negatives[:SHOWN],
        held_out_positives=texts[SHOWN : SHOWN + HELD_OUT],
        held_out_negatives=negatives[SHOWN:],
        more_positives=texts[SHOWN + HELD_OUT :],
        more_activations=[a for _, a in active[SHOWN + HELD_OUT :]],
    )
