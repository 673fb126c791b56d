"""Labellers: an interpreter (examples -> 1-8 word label) and a predictor (label + text ->
score in [-1, 1]). The offline labeller needs no API; the LLM labeller uses any
OpenAI-compatible endpoint through the ``openai`` client."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Protocol

import numpy as np

from saedb.embedders import Embedder
from saedb.errors import InvalidInputError

STOPWORDS = frozenset(
    """a about above after again against all also an and any are as at be been being between both but by can could
    did do does doing during each few for from further had has have having here how however i if in into is it its
    itself more most much new no not of off on once only or other our out over own paper present presented results
    same several show shown so some such than that the their them then there these they this those through to too
    two under until up using use used very via was we were what when where which while who whom why will with within
    without would find found first one based study studies work approach method methods propose proposed provide""".split()
)
WORD = re.compile(r"[a-z][a-z0-9\-]+")


class Labeller(Protocol):
    name: str

    def label(self, positives: list[str], negatives: list[str]) -> str:
        """A 1-8 word label for what the positives share and the negatives lack."""
        ...

    def predict(self, label: str, texts: list[str]) -> list[float]:
        """For each text, -1 (the labelled concept is absent) to 1 (present)."""
        ...


def _terms(text: str) -> set[str]:
    words = [w for w in WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 2]
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def clean_label(text: str) -> str:
    """First line, no quotes or trailing dot, at most 8 words; empty is an error."""
    words = text.strip().splitlines()[0].strip().strip("\"'`*").rstrip(".").split() if text.strip() else []
    if not words:
        raise InvalidInputError("the interpreter returned an empty label")
    return " ".join(words[:8])


class OfflineLabeller:
    """Contrastive keywords (log-odds of document frequency, activating vs non-activating
    abstracts) as the label; embedding similarity to the label as the predictor, centred
    between the shown activating and non-activating examples."""

    name = "offline-keywords"

    def __init__(self, embedder: Embedder, background: list[str] | None = None, max_terms: int = 3) -> None:
        self.embedder = embedder
        self.background = background or []
        self.max_terms = max_terms
        self._calibration: dict[str, tuple[float, float]] = {}

    def label(self, positives: list[str], negatives: list[str]) -> str:
        contrast = negatives + self.background
        pos = Counter(t for text in positives for t in _terms(text))
        neg = Counter(t for text in contrast for t in _terms(text))

        def score(term: str) -> float:
            p = (pos[term] + 0.1) / (len(positives) + 0.2)
            q = (neg[term] + 0.5) / (len(contrast) + 1.0)
            return math.log(p / (1 - p)) - math.log(q / (1 - q)) + (0.3 if " " in term else 0.0)

        ranked = sorted((t for t in pos if pos[t] >= 2), key=lambda t: (-score(t), t))
        chosen: list[str] = []
        for term in ranked:
            if not any(set(term.split()) & set(c.split()) for c in chosen):
                chosen.append(term)
            if len(chosen) == self.max_terms:
                break
        if not chosen:
            chosen = ranked[:1] or [sorted(pos, key=lambda t: -pos[t])[0]]
        label = clean_label(", ".join(chosen))
        self.calibrate(label, positives, negatives)
        return label

    def calibrate(self, label: str, positives: list[str], negatives: list[str]) -> None:
        """Centre the predictor for ``label`` between known activating and non-activating texts."""
        sims = self._similarity(label, positives + negatives)
        mid = (sims[: len(positives)].mean() + sims[len(positives) :].mean()) / 2
        spread = max(abs(sims[: len(positives)].mean() - mid), 1e-3)
        self._calibration[label] = (float(mid), float(spread))

    def _similarity(self, label: str, texts: list[str]) -> np.ndarray:
        vectors = self.embedder.embed([label, *texts])
        return vectors[1:] @ vectors[0]

    def predict(self, label: str, texts: list[str]) -> list[float]:
        mid, spread = self._calibration.get(label, (0.0, 0.1))
        return [float(np.tanh((s - mid) / spread)) for s in self._similarity(label, texts)]


INTERPRETER_PROMPT = (
    "You are labelling one feature of a sparse autoencoder trained on embeddings of scientific abstracts. "
    "The feature is ACTIVE on the first group of abstracts and INACTIVE on the second. "
    "Reply with a label of 1 to 8 words naming the concept that the active abstracts share and the inactive ones lack. "
    "Reply with the label only."
)
PREDICTOR_PROMPT = (
    "A feature of a sparse autoencoder over scientific abstracts is labelled: {label!r}. "
    "For each numbered abstract, rate how strongly the feature is present, from -1 (absent) to 1 (present). "
    "Reply with a JSON list of {n} numbers and nothing else."
)


def _numbered(texts: list[str]) -> str:
    return "\n\n".join(f"{i + 1}. {t[:1500]}" for i, t in enumerate(texts))


class LLMLabeller:
    """Interpreter and predictor through an OpenAI-compatible chat endpoint."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, attempts: int = 3) -> None:
        from openai import OpenAI

        self.name = f"llm:{model}"
        self.model = model
        self.attempts = attempts
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused", max_retries=4, timeout=60)

    def _ask(self, system: str, user: str) -> str:
        response = self.client.chat.completions.create(
            model=self.model, temperature=0, messages=[{"role": "system", "content": system}, {"role": "user", "content": user}]
        )
        return response.choices[0].message.content or ""

    def label(self, positives: list[str], negatives: list[str]) -> str:
        user = f"ACTIVE:\n{_numbered(positives)}\n\nINACTIVE:\n{_numbered(negatives)}"
        return self._retry(lambda: clean_label(self._ask(INTERPRETER_PROMPT, user)))

    def predict(self, label: str, texts: list[str]) -> list[float]:
        def parse() -> list[float]:
            reply = self._ask(PREDICTOR_PROMPT.format(label=label, n=len(texts)), _numbered(texts))
            match = re.search(r"\[.*\]", reply, re.DOTALL)
            scores = json.loads(match.group(0)) if match else None
            if not isinstance(scores, list) or len(scores) != len(texts) or not all(isinstance(s, (int, float)) for s in scores):
                raise InvalidInputError(f"the predictor did not return {len(texts)} numbers: {reply[:200]!r}")
            return [max(-1.0, min(1.0, float(s))) for s in scores]

        return self._retry(parse)

    def _retry(self, call):
        """Retry malformed replies (HTTP errors are retried by the client itself)."""
        for attempt in range(self.attempts):
            try:
                return call()
            except (InvalidInputError, json.JSONDecodeError):
                if attempt == self.attempts - 1:
                    raise
