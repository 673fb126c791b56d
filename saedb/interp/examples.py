"""Examples for one feature, drawn from SQL.

A model trained by saedb lists the documents its trainer held out (``model_holdout``); then
- shown to the interpreter: the 5 top-activating *training* abstracts (with activations) and 5
  training abstracts where the feature does not fire;
- held out for the predictor: the (up to) 3 top-activating *held-out* abstracts and 3 held-out
  abstracts where it does not fire: documents the SAE never trained on and the labeller never
  read;
- ``more_positives``: training abstracts ranked 6-``POOL``, for labellers that read more than 5
  examples (the offline labeller).

A model with no held-out split (imported) gets the paper's split (paper-notes §3.1): shown the
top 5, held out the activating abstracts ranked 6-8 and 3 more non-activating ones, more
positives ranked 9-``POOL``; ``FeatureExamples.held_out_split`` says which.

Deviation: non-activating abstracts are a seeded random sample (from a pool of
``NEGATIVE_POOL`` random documents shared by all features of a run), not the first ones
in corpus order (a quirk of the paper's code); the paper's Pearson depends on that choice.

Cost: two queries per ``EXAMPLES_BATCH`` features plus four for the pools, so labelling 1024
features of a 1M-document model reads sae_codes 32 times, not 3072.
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
    positives: list[str]  # the 5 top-activating (training) abstracts
    activations: list[float]  # their activations
    negatives: list[str]  # 5 random (training) abstracts where the feature does not fire
    held_out_positives: list[str]  # top held-out activating abstracts (no split: ranked 6-8)
    held_out_negatives: list[str]  # 3 more non-activating (held-out) abstracts
    more_positives: list[str]  # activating (training) abstracts ranked below the shown ones
    more_activations: list[float]  # their activations
    held_out_split: bool = False  # held-out examples from the trainer's held-out documents

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


# Which documents a query reads: all of them, the model's training documents, its held-out ones.
ALL, TRAINING, HELD_OUT_DOCUMENTS = "", "NOT EXISTS", "EXISTS"


def documents_filter(documents: str, doc_id: str) -> str:
    """SQL condition keeping the ``documents`` kind (a model id is the query's first parameter)."""
    return "TRUE" if documents == ALL else \
        f"{documents} (SELECT 1 FROM model_holdout h WHERE h.model_id = ? AND h.doc_id = {doc_id})"


def has_holdout(backend: Backend, model_id: int) -> bool:
    return bool(backend.query("SELECT count(*) FROM (SELECT 1 FROM model_holdout WHERE model_id = ? LIMIT 1) t", (model_id,))[0][0])


TOP_ACTIVATIONS_SQL = """
SELECT t.feature_id, p.title, p.abstract, t.activation, t.n_active FROM (
    SELECT feature_id, doc_id, activation, count(*) OVER (PARTITION BY feature_id) AS n_active,
           row_number() OVER (PARTITION BY feature_id ORDER BY activation DESC, doc_id) AS rank
    FROM sae_codes c WHERE model_id = ? AND feature_id IN ({marks}) AND {documents}
) t JOIN papers p ON p.doc_id = t.doc_id
WHERE t.rank <= ? ORDER BY t.feature_id, t.rank
"""


def top_activations(backend: Backend, model_id: int, features: list[int], limit: int,
                    documents: str) -> tuple[dict[int, list[tuple[str, float]]], dict[int, int]]:
    """Each feature's top ``limit`` (text, activation) among the ``documents`` kind, best first,
    and the number of those documents it fires on."""
    active: dict[int, list[tuple[str, float]]] = {f: [] for f in features}
    n_active: dict[int, int] = {f: 0 for f in features}
    where = documents_filter(documents, "c.doc_id")
    params = (model_id, *features, *((model_id,) if documents != ALL else ()), limit)
    for feature_id, title, abstract, activation, count in backend.query(
        TOP_ACTIVATIONS_SQL.format(marks=", ".join("?" * len(features)), documents=where), params
    ):
        active[feature_id].append((document_text(title, abstract), float(activation)))
        n_active[feature_id] = int(count)
    return active, n_active


@dataclass(frozen=True)
class NegativePool:
    """``NEGATIVE_POOL`` random documents of one kind (a seeded hash order) and the features
    that fire on each: every feature draws its non-activating examples from them, so a run
    reads the corpus once for negatives instead of once per feature."""

    texts: list[str]
    firing: list[set[int]]

    @classmethod
    def load(cls, backend: Backend, model_id: int, seed: int, documents: str = ALL) -> "NegativePool":
        salt = random.Random(seed).randrange(1_000_003)
        where = documents_filter(documents, "p.doc_id")
        rows = backend.query(
            f"SELECT p.doc_id, p.title, p.abstract FROM papers p JOIN embeddings e ON e.doc_id = p.doc_id WHERE {where} "
            "ORDER BY (p.doc_id * 2654435761 + ?) % 1000003, p.doc_id LIMIT ?",
            (*((model_id,) if documents != ALL else ()), salt, NEGATIVE_POOL))
        position = {doc_id: i for i, (doc_id, _, _) in enumerate(rows)}
        firing: list[set[int]] = [set() for _ in rows]
        if rows:
            for doc_id, feature_id in backend.query(
                f"SELECT doc_id, feature_id FROM sae_codes WHERE model_id = ? AND doc_id IN ({', '.join('?' * len(rows))})",
                (model_id, *position),
            ):
                firing[position[doc_id]].add(int(feature_id))
        return cls([document_text(t, a) for _, t, a in rows], firing)

    def quiet(self, feature_id: int) -> list[str]:
        return [text for text, fired in zip(self.texts, self.firing) if feature_id not in fired]

    def sample(self, feature_id: int, count: int, rng: random.Random) -> list[str] | None:
        """``count`` random pool documents on which the feature does not fire (None: too few)."""
        quiet = self.quiet(feature_id)
        return rng.sample(quiet, count) if len(quiet) >= count else None


def examples_for(backend: Backend, model_id: int, features: list[int], n_documents: int,
                 seed: int = 0) -> Iterator[FeatureExamples]:
    """Examples of each feature (skipping those with too few activating documents to hold any
    out), ``EXAMPLES_BATCH`` features per pass over sae_codes; a feature's examples depend on
    the seed only, not on the features batched with it."""
    split = has_holdout(backend, model_id)
    shown_pool = NegativePool.load(backend, model_id, seed, TRAINING if split else ALL)
    held_pool = NegativePool.load(backend, model_id, seed + 1, HELD_OUT_DOCUMENTS) if split else None
    for start in range(0, len(features), EXAMPLES_BATCH):
        batch = features[start : start + EXAMPLES_BATCH]
        active, n_active = top_activations(backend, model_id, batch, POOL, TRAINING if split else ALL)
        if held_pool is None:
            for feature_id in batch:
                if len(active[feature_id]) >= SHOWN + HELD_OUT:
                    yield feature_examples(backend, model_id, feature_id, active[feature_id],
                                           n_active[feature_id] / max(n_documents, 1), shown_pool, seed)
            continue
        held, n_held = top_activations(backend, model_id, batch, HELD_OUT, HELD_OUT_DOCUMENTS)
        for feature_id in batch:
            if len(active[feature_id]) >= SHOWN and held[feature_id]:
                density = (n_active[feature_id] + n_held[feature_id]) / max(n_documents, 1)
                yield split_examples(backend, model_id, feature_id, active[feature_id], held[feature_id], density,
                                     shown_pool, held_pool, seed)


def feature_examples(backend: Backend, model_id: int, feature_id: int, active: list[tuple[str, float]],
                     density: float, pool: NegativePool, seed: int) -> FeatureExamples:
    """Split a feature's top activations (text, activation; best first) as in the paper and
    draw its non-activating examples from the pool (from the whole corpus when the feature
    fires on nearly all of the pool)."""
    rng = random.Random(seed * 1_000_003 + feature_id)
    negatives = pool.sample(feature_id, SHOWN + HELD_OUT, rng) \
        or random_inactive_documents(backend, model_id, [feature_id], SHOWN + HELD_OUT, rng)
    held = [text for text, _ in active[SHOWN : SHOWN + HELD_OUT]]
    return _examples(feature_id, density, active[:SHOWN] + active[SHOWN + HELD_OUT :], negatives[:SHOWN], held,
                     negatives[SHOWN:], held_out_split=False)


def split_examples(backend: Backend, model_id: int, feature_id: int, active: list[tuple[str, float]],
                   held: list[tuple[str, float]], density: float, shown_pool: NegativePool, held_pool: NegativePool,
                   seed: int) -> FeatureExamples:
    """Training documents for the labeller, held-out documents for the predictor: as many
    held-out non-activating abstracts as ``HELD_OUT`` (fewer when the held-out pool has fewer
    on which the feature is quiet)."""
    rng = random.Random(seed * 1_000_003 + feature_id)
    negatives = shown_pool.sample(feature_id, SHOWN, rng) \
        or random_inactive_documents(backend, model_id, [feature_id], SHOWN, rng)
    quiet_held = held_pool.quiet(feature_id)
    return _examples(feature_id, density, active, negatives, [text for text, _ in held],
                     rng.sample(quiet_held, min(HELD_OUT, len(quiet_held))), held_out_split=True)


def _examples(feature_id: int, density: float, readable: list[tuple[str, float]], negatives: list[str],
              held_positives: list[str], held_negatives: list[str], held_out_split: bool) -> FeatureExamples:
    """``readable``: the activating (text, activation) the labeller may read, best first."""
    return FeatureExamples(
        feature_id=feature_id,
        density=density,
        positives=[text for text, _ in readable[:SHOWN]],
        activations=[a for _, a in readable[:SHOWN]],
        negatives=negatives,
        held_out_positives=held_positives,
        held_out_negatives=held_negatives,
        more_positives=[text for text, _ in readable[SHOWN:]],
        more_activations=[a for _, a in readable[SHOWN:]],
        held_out_split=held_out_split,
    )
