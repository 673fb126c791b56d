"""Judges: which of 5 topics went up and which went down between two top-10 result sets.

None of them is calibrated on the documents of the feature it judges:
- ``embedder:NAME`` embeds the topics and the results with a second embedder, one that did not
  produce the database's vectors (so neither the SAE nor its labels), and picks the topic whose
  mean similarity to the results rose most (up) and fell most (down);
- ``categories`` reads the results' arXiv categories, metadata no embedding produced: the
  category whose share of the results rose most (up) and fell most (down);
- ``llm:MODEL`` asks a chat model, with the paper's judge prompt ending ``FINAL: <up#>, <down#>``.
Ties (e.g. identical result sets) are broken at random, so a judge that sees no change scores 0.2.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from saedb.backends import Backend
from saedb.embedders import Embedder, get_embedder
from saedb.errors import InvalidInputError
from saedb.evaluation.topics import Topic, TopicKind
from saedb.interp.examples import document_text
from saedb.llm import FINAL, ChatModel, MalformedReplyError

Choice = tuple[int | None, int | None]  # option indices (0-based) named as up and down; None: no answer


@dataclass(frozen=True)
class Doc:
    doc_id: int
    title: str
    abstract: str
    categories: tuple[str, ...]


class Judge(Protocol):
    name: str
    kind: TopicKind  # the topics it can judge

    def choose(self, options: Sequence[Topic], before: Sequence[Doc], after: Sequence[Doc], rng: random.Random) -> Choice: ...


def extremes(scores: Sequence[float], rng: random.Random) -> Choice:
    """Index of the largest and of the smallest score, ties broken at random."""
    values = np.asarray(scores, dtype=np.float64)
    tied_max = np.flatnonzero(np.isclose(values, values.max(), rtol=0, atol=1e-9))
    tied_min = np.flatnonzero(np.isclose(values, values.min(), rtol=0, atol=1e-9))
    return int(rng.choice(tied_max)), int(rng.choice(tied_min))


class EmbedderJudge:
    kind: TopicKind = "labels"

    def __init__(self, embedder: Embedder, database_embedder: str) -> None:
        if embedder.name == database_embedder:
            raise InvalidInputError(
                f"the judge's embedder must not be the one that made the database's vectors ({database_embedder}): "
                "choose another, e.g. embedder:minilm or embedder:wordllama-256")
        self.name = f"embedder:{embedder.name}"
        self.embedder = embedder
        self.vectors: dict[object, np.ndarray] = {}

    def _vectors(self, keyed_texts: dict[object, str]) -> np.ndarray:
        missing = [key for key in keyed_texts if key not in self.vectors]
        if missing:
            for key, vector in zip(missing, self.embedder.embed([keyed_texts[k] for k in missing])):
                self.vectors[key] = vector
        return np.stack([self.vectors[key] for key in keyed_texts])

    def choose(self, options: Sequence[Topic], before: Sequence[Doc], after: Sequence[Doc], rng: random.Random) -> Choice:
        topics = self._vectors({("topic", t.name): t.name for t in options})
        def mean_similarity(docs: Sequence[Doc]) -> np.ndarray:
            vectors = self._vectors({d.doc_id: document_text(d.title, d.abstract) for d in docs})
            return (vectors @ topics.T).mean(axis=0)
        return extremes(mean_similarity(after) - mean_similarity(before), rng)


class CategoriesJudge:
    name = "categories"
    kind: TopicKind = "categories"

    def choose(self, options: Sequence[Topic], before: Sequence[Doc], after: Sequence[Doc], rng: random.Random) -> Choice:
        def share(docs: Sequence[Doc], category: str | None) -> float:
            return sum(category in d.categories for d in docs) / max(len(docs), 1)
        return extremes([share(after, t.category) - share(before, t.category) for t in options], rng)


JUDGE_SYSTEM = "You are an expert research librarian comparing two sets of search results."
ABSTRACT_CHARS = 400


def results_block(docs: Sequence[Doc]) -> str:
    return "\n".join(f"{i}. {d.title}: {d.abstract[:ABSTRACT_CHARS]}" for i, d in enumerate(docs, 1))


def judge_prompt(options: Sequence[Topic], before: Sequence[Doc], after: Sequence[Doc]) -> str:
    """The paper's judge prompt structure: both result sets, 5 numbered topics, FINAL: <up#>, <down#>."""
    topics = "\n".join(f"{i}. {t.name}" for i, t in enumerate(options, 1))
    return (
        "A search query was modified to move its results towards one topic and away from another.\n\n"
        f"Results of the ORIGINAL query:\n{results_block(before)}\n\n"
        f"Results of the MODIFIED query:\n{results_block(after)}\n\n"
        f"Topics:\n{topics}\n\n"
        "First list the main topics of each set of results. Then compare them: which of the numbered topics "
        "became more prominent in the modified results, and which became less prominent? "
        "End with one line: FINAL: <number of the topic that went up>, <number of the topic that went down>"
    )


def parse_choice(reply: str, n_options: int) -> Choice:
    """The first two integers after the last 'FINAL:', as 0-based option indices."""
    found = FINAL.findall(reply)
    numbers = [int(n) for n in re.findall(r"\d+", found[-1])] if found else []
    if len(numbers) < 2 or not all(1 <= n <= n_options for n in numbers[:2]):
        raise MalformedReplyError(f"the judge's reply has no 'FINAL: <up#>, <down#>' line: {reply[-200:]!r}")
    return numbers[0] - 1, numbers[1] - 1


class LLMJudge:
    kind: TopicKind = "labels"

    def __init__(self, chat: ChatModel) -> None:
        self.name = f"llm:{chat.model}"
        self.chat = chat

    def choose(self, options: Sequence[Topic], before: Sequence[Doc], after: Sequence[Doc], rng: random.Random) -> Choice:
        prompt = judge_prompt(options, before, after)
        try:
            return self.chat.ask_parsed(JUDGE_SYSTEM, prompt, lambda reply: parse_choice(reply, len(options)))
        except MalformedReplyError:
            return None, None  # counted as wrong, and as unanswered


def get_judge(spec: str, backend: Backend, chat: Callable[[str], ChatModel] = ChatModel) -> Judge:
    """``categories``, ``embedder:NAME`` or ``llm:MODEL`` (OPENAI_BASE_URL; ``chat`` makes its client)."""
    kind, _, name = spec.partition(":")
    if spec == "categories":
        return CategoriesJudge()
    if kind == "embedder" and name:
        return EmbedderJudge(get_embedder(name), backend.require_embedder()[0])
    if kind == "llm" and name:
        return LLMJudge(chat(name))
    raise InvalidInputError(f"unknown judge {spec!r}: use categories, embedder:NAME or llm:MODEL")
