"""Queries and the paper's per-query choice of what to steer (paper-notes §5.3).

Per query: ``down`` is a random topic active in the query (one of its features is in the
query's top-k code), ``up`` a random topic not active and highly interpretable; the judge is
shown both with 3 random other topics, shuffled (chance 0.2 for each of up and down).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from saedb.backends import Backend
from saedb.errors import InvalidInputError, require_at_least_one
from saedb.evaluation.topics import Topic, TopicKind
from saedb.sae import SparseCodes

N_OPTIONS = 5
# ``up`` is drawn from topics at least this interpretable (the paper: Pearson > 0.99 for LLM labels;
# clean offline labels start at 0.8), falling back to any inactive topic when none is.
# Category topics are already features that predict their category (topics.category_topics).
UP_INTERPRETABILITY: dict[TopicKind, float] = {"labels": 0.9, "families": 0.0, "categories": 0.0}


@dataclass(frozen=True)
class Query:
    text: str
    own_doc: int | None = None  # the corpus paper the query was taken from, kept out of its results


def title_queries(backend: Backend, n: int, seed: int) -> list[Query]:
    """Titles of ``n`` random papers (seeded), each excluding its own paper from the results."""
    require_at_least_one(n_queries=n)
    rows = backend.query("SELECT doc_id, title FROM papers ORDER BY doc_id")
    return [Query(title, doc_id) for doc_id, title in random.Random(seed).sample(rows, min(n, len(rows)))]


def file_queries(path: Path) -> list[Query]:
    """One query per line; blank lines and repeats are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read queries from {path}: {exc}") from exc
    queries = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not queries:
        raise InvalidInputError(f"{path} holds no queries (one per line)")
    return [Query(text) for text in queries]


@dataclass(frozen=True)
class Case:
    query: Query
    vector: np.ndarray  # the query's embedding
    up: Topic
    down: Topic
    options: tuple[Topic, ...]  # up, down and distractors, shuffled

    @property
    def up_option(self) -> int:
        return self.options.index(self.up)

    @property
    def down_option(self) -> int:
        return self.options.index(self.down)


def pick(topics: Sequence[Topic], rng: random.Random) -> Topic:
    """A random key (label, family or category), then a random topic of that key: a category
    that many features predict is not drawn more often than one that few do."""
    key = rng.choice(sorted({t.key for t in topics}))
    return rng.choice([t for t in topics if t.key == key])


def build_cases(queries: Sequence[Query], vectors: np.ndarray, codes: SparseCodes, topics: Sequence[Topic],
                kind: TopicKind, seed: int) -> list[Case]:
    """One case per query that has an active topic; queries without one are left out."""
    rng = random.Random(seed)
    by_key: dict[str, Topic] = {}
    for topic in topics:
        by_key.setdefault(topic.key, topic)
    cases = []
    for query, vector, active_row in zip(queries, vectors, codes.rows()):
        active = {feature for feature, _ in active_row}
        on = [t for t in topics if active.intersection(t.features)]
        if not on:
            continue
        on_keys = {t.key for t in on}
        off = [t for t in topics if t.key not in on_keys]
        wanted = [t for t in off if t.interpretability >= UP_INTERPRETABILITY[kind]] or off
        if not wanted:
            continue
        down, up = pick(on, rng), pick(wanted, rng)
        others = sorted(set(by_key) - {up.key, down.key})
        options = [up, down] + [by_key[key] for key in rng.sample(others, N_OPTIONS - 2)]
        rng.shuffle(options)
        cases.append(Case(query, vector, up, down, tuple(options)))
    return cases
