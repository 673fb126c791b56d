"""Evaluation of steered search against query rewriting (O'Neill et al. 2024, section 6).

For each (query, target feature, direction) case, two ways of changing the query:
- steering: q' = steer(q, feature, ±strength) in embedding space;
- rewriting: q' = embed(rewrite(query text, feature label, direction)) — an LLM rewrite
  when configured, else an offline rewrite (append "label", or ", not label").
Each is scored on: did the target feature's pre-activation move the intended way, how
similar q' stays to q (cosine), and judged accuracy — the share of the top results that
the judge (by default the offline lexical predictor, which reads only the words of the label
and of the result and is calibrated on nothing) finds with (up) or without (down) the
labelled concept. The unmodified query is scored as a baseline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import numpy as np

from saedb.backends import Backend
from saedb.embedders import Embedder
from saedb.errors import InvalidInputError
from saedb.interp.autointerp import corpus_stats
from saedb.interp.examples import document_text
from saedb.interp.labellers import LexicalPredictor, Predictor
from saedb.llm import ChatModel
from saedb.sae import SAE
from saedb.search import Steering, search

Direction = Literal["up", "down"]


class Rewriter(Protocol):
    name: str

    def rewrite(self, query: str, label: str, direction: Direction) -> str: ...


class OfflineRewriter:
    name = "offline-append"

    def rewrite(self, query: str, label: str, direction: Direction) -> str:
        return f"{query} {label}" if direction == "up" else f"{query}, not {label}"


class LLMRewriter:
    """Query rewriting through an OpenAI-compatible chat endpoint."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None) -> None:
        self.name = f"llm:{model}"
        self.chat = ChatModel(model, base_url, api_key)

    def rewrite(self, query: str, label: str, direction: Direction) -> str:
        goal = "also about" if direction == "up" else "not about"
        reply = self.chat.ask("You rewrite search queries.", f"Rewrite this search query so that it is {goal} {label!r}. "
                                                             f"Reply with the query only.\n\nQuery: {query}")
        return reply.strip() or query


@dataclass
class MethodScores:
    moved: list[bool] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {"target_moved": float(np.mean(self.moved)), "cosine_to_query": float(np.mean(self.cosine)),
                "judged_accuracy": float(np.mean(self.accuracy))}


@dataclass(frozen=True)
class Case:
    query: str
    feature: int
    label: str
    direction: Direction


def pre_activation(sae: SAE, x: np.ndarray, feature: int) -> float:
    return float(sae.pre_activations(x[None, :].astype(np.float32))[0, feature])


def build_cases(backend: Backend, sae: SAE, model_id: int, embedder: Embedder, n_queries: int, seed: int) -> list[Case]:
    """Queries are titles of random papers. 'up' targets a well-labelled feature the query
    lacks; 'down' targets the query's strongest labelled feature."""
    labels = dict(backend.query(
        "SELECT feature_id, label FROM feature_best_labels WHERE model_id = ? AND pearson > 0.5 ORDER BY feature_id", (model_id,)
    ))
    if len(labels) < 2:
        raise InvalidInputError("evaluation needs labelled features with pearson > 0.5: run `saedb interp` first")
    rng = random.Random(seed)
    titles = [t for (t,) in backend.query("SELECT title FROM papers ORDER BY doc_id")]
    cases = []
    for query in rng.sample(titles, min(n_queries, len(titles))):
        active = [(i, v) for i, v in sae.encode(embedder.embed([query])).rows()[0] if i in labels]
        absent = sorted(set(labels) - {i for i, _ in active})
        up = rng.choice(absent)
        cases.append(Case(query, up, labels[up], "up"))
        if active:
            cases.append(Case(query, active[0][0], labels[active[0][0]], "down"))
    return cases


def evaluate(
    backend: Backend,
    model_id: int,
    embedder: Embedder,
    judge: Predictor | None = None,
    rewriter: Rewriter | None = None,
    n_queries: int = 20,
    strengths: Sequence[float] = (0.5, 1.0),
    top: int = 10,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Scores per method ('baseline', 'steering@<strength>', 'rewriting') and direction."""
    sae = backend.load_sae(model_id)
    judge = judge or LexicalPredictor(corpus_stats(backend))
    rewriter = rewriter or OfflineRewriter()
    scores: dict[str, MethodScores] = {}
    for case in build_cases(backend, sae, model_id, embedder, n_queries, seed):
        q = embedder.embed([case.query])[0]
        sign = 1.0 if case.direction == "up" else -1.0
        variants: dict[str, tuple[np.ndarray, Steering | None]] = {
            "baseline": (q, None),
            "rewriting": (embedder.embed([rewriter.rewrite(case.query, case.label, case.direction)])[0], None),
        }
        for strength in strengths:  # steered in SQL; the numpy twin gives q' for the metrics
            steering = Steering("feature", case.feature, sign * strength, model_id)
            variants[f"steering@{strength:g}"] = (sae.steer(q, case.feature, sign * strength)[0], steering)
        before = pre_activation(sae, q, case.feature)
        for method, (vector, steering) in variants.items():
            hits = search(backend, q if steering else vector, limit=top, steering=steering or ())
            texts = [document_text(t, a) for t, a in backend.query(
                "SELECT title, abstract FROM papers WHERE doc_id IN (" + ", ".join("?" * len(hits)) + ")", [h.doc_id for h in hits]
            )]
            has_concept = [s > 0 for s in judge.predict(case.label, texts)]
            wanted = has_concept if case.direction == "up" else [not h for h in has_concept]
            entry = scores.setdefault(f"{method}/{case.direction}", MethodScores())
            entry.moved.append(sign * (pre_activation(sae, vector, case.feature) - before) > 0)
            entry.cosine.append(float(vector @ q / np.linalg.norm(vector) / np.linalg.norm(q)))
            entry.accuracy.append(float(np.mean(wanted)))
    return {name: s.summary() for name, s in sorted(scores.items())}
