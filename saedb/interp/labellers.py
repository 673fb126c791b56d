"""Labellers: an interpreter (examples -> label of 1-8 words) and a predictor (label + one
abstract -> score in [-1, 1], > 0 meaning "the feature fires").

- ``OfflineLabeller``: candidate labels are the phrases (or two) that the feature's activating
  abstracts use far more often than the corpus does; with a round trip (``RoundTrip``) the
  candidate that switches the feature on most strongly in the SAE wins (the label names the
  feature's direction, not only words its top documents share). The predictor is lexical
  evidence for the label in the abstract (``LexicalPredictor``): it never looks at the
  embedding space, so its score measures whether the label names what the documents say.
- ``LLMLabeller``: the paper's protocol through any OpenAI-compatible endpoint: the
  interpreter reasons in steps and ends with ``FINAL: <label>``; the predictor sees one
  abstract at a time and ends with ``PREDICTION: <number>``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import chain
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from saedb.interp.examples import FeatureExamples
from saedb.interp.text import CorpusStats, content_runs, normal_form, phrases, surface_form, words
from saedb.llm import ChatModel, MalformedReplyError, label_answer, prediction

if TYPE_CHECKING:
    from saedb.interp.roundtrip import RoundTrip

MIN_SUPPORT = 0.08  # a label phrase carries at least this share of the feature's activation mass
MIN_DOCUMENTS = 3  # ... in at least this many abstracts
SECOND_PHRASE = 0.5  # a second phrase joins the label when it scores at least this share of the first
SUBSUMED = 0.8  # a phrase gives way to a longer phrase containing it with at least this share of its support
SECOND_LIFT = 5.0  # ... and is at least this many times more common among the feature's abstracts than in the corpus
ROUNDTRIP_CANDIDATES = 8  # best-ranked phrases (beside the combined label) whose round trip is measured


def _contains(longer: tuple[str, ...], shorter: tuple[str, ...]) -> bool:
    return any(longer[i : i + len(shorter)] == shorter for i in range(len(longer) - len(shorter) + 1))


class Predictor(Protocol):
    def predict(self, label: str, texts: list[str]) -> list[float]:
        """For each text, -1 (the labelled concept is absent) to 1 (present)."""
        ...


class Labeller(Predictor, Protocol):
    name: str

    def label(self, examples: FeatureExamples) -> str:
        """A 1-8 word label for what the activating examples share and the others lack."""
        ...


class LexicalPredictor:
    """Evidence that a text is about a label, from the words alone.

    Each phrase of the label (runs of content words) counts 1 per verbatim occurrence in the
    text (in normal form), else 0.5 times the share of its words' IDF present anywhere in
    it. The score is 1 - 2·exp(-evidence): -1 with no evidence, > 0 from about one verbatim
    occurrence. Corpus IDF is the only statistic used; nothing is fitted to a feature.
    """

    def __init__(self, stats: CorpusStats) -> None:
        self.stats = stats

    def label_phrases(self, label: str) -> list[tuple[str, ...]]:
        return [tuple(normal_form(w) for w in run) for run in content_runs(label)]

    def evidence(self, label_phrases: list[tuple[str, ...]], text: str) -> float:
        seq, present = text_words(text)
        total = 0.0
        for phrase in label_phrases:
            size = len(phrase)
            exact = sum(1 for i in range(len(seq) - size + 1) if seq[i : i + size] == phrase)
            if exact:
                total += exact
            else:
                weights = [self.stats.idf(w) for w in phrase]
                total += 0.5 * sum(w for w, word in zip(weights, phrase) if word in present) / sum(weights)
        return total

    def predict(self, label: str, texts: list[str]) -> list[float]:
        label_phrases = self.label_phrases(label)
        return [1 - 2 * math.exp(-self.evidence(label_phrases, t)) for t in texts]


@dataclass(frozen=True)
class MinedText:
    """A text's phrases (each once, with the spelling it uses) and its title's phrases (the
    title: the text before the first '. ')."""

    phrases: dict[tuple[str, ...], str]
    title_phrases: tuple[tuple[str, ...], ...]


# The same abstracts activate many features and are scored against many labels: each is mined
# once per process (the 4,096 most recent abstracts, ~16 KB each), not once per feature (the
# demo: 120k texts mined, 2,500 distinct).
@lru_cache(maxsize=4096)
def mined_text(text: str) -> MinedText:
    return MinedText(phrases(text), tuple(phrases(text.split(". ", 1)[0])))


@lru_cache(maxsize=4096)
def text_words(text: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """The text's words in order (``words``) and as a set."""
    seq = tuple(words(text))
    return seq, frozenset(seq)


@dataclass(frozen=True)
class RankedPhrase:
    """A candidate phrase of the offline labeller: its score, lift and normal form; its spelling
    is worked out from the texts only when first asked (a label needs a few of some 150)."""

    score: float
    lift: float
    key: tuple[str, ...]
    texts: Sequence[MinedText] = field(repr=False, compare=False)

    @cached_property
    def spelling(self) -> str:
        return surface_form([m.phrases[self.key] for m in self.texts if self.key in m.phrases])


class OfflineLabeller:
    """Contrastive phrase mining over the feature's activating abstracts (shown and pooled,
    never the held-out ones) against corpus document frequencies."""

    def __init__(self, stats: CorpusStats, max_phrases: int = 2, roundtrip: "RoundTrip | None" = None) -> None:
        self.stats = stats
        self.max_phrases = max_phrases
        self.predictor = LexicalPredictor(stats)
        self.roundtrip = roundtrip
        self.name = "offline-phrases" if roundtrip is None else "offline-roundtrip"

    def ranked_phrases(self, texts: list[str], weights: list[float]) -> list[RankedPhrase]:
        """The texts' phrases, best first. p is the share of the texts' weight
        (activation) on texts with the phrase, t the same for their titles (a title states the
        topic; the text before the first '. ' is taken as the title), q the phrase's corpus
        share; score = (p + t) / 2 · log(p / q), lift = p / q. Phrases below MIN_SUPPORT or in
        fewer than MIN_DOCUMENTS texts are left out, and so is a phrase inside a longer one that
        has nearly its support ('neural' when 'graph neural networks' is as common)."""
        mined = [mined_text(text) for text in texts]
        total = sum(weights)
        shares = [weight / total for weight in weights]
        # Phrases numbered in order of first appearance; per phrase, the shares of the texts with
        # it added in text order (as a loop over texts would add them) by np.bincount.
        every = list(chain.from_iterable(m.phrases for m in mined))
        number = {key: i for i, key in enumerate(dict.fromkeys(every))}
        keys = list(number)
        numbers = np.fromiter(map(number.__getitem__, every), np.int64, len(every))
        support = np.bincount(numbers, np.repeat(shares, [len(m.phrases) for m in mined]), len(keys)).tolist()
        documents = np.bincount(numbers, minlength=len(keys)).tolist()
        in_titles: dict[tuple[str, ...], float] = defaultdict(float)
        for m, share in zip(mined, shares):
            for key in m.title_phrases:
                in_titles[key] += share
        kept = {key: p for key, p, n in zip(keys, support, documents) if p >= MIN_SUPPORT and n >= MIN_DOCUMENTS}
        longer_with: dict[str, list[tuple[str, ...]]] = defaultdict(list)  # word -> kept phrases of 2+ words with it
        for key in kept:
            for word in set(key) if len(key) > 1 else ():
                longer_with[word].append(key)
        ranked = []
        for key, p in kept.items():
            if not any(len(longer) > len(key) and kept[longer] >= SUBSUMED * p and _contains(longer, key)
                       for longer in longer_with[key[0]]):
                lift = p / self.stats.share(key)
                ranked.append(RankedPhrase((p + in_titles[key]) / 2 * math.log(lift), lift, key, mined))
        ranked.sort(key=lambda r: (-r.score, -len(r.key), r.key))
        return ranked

    def label(self, examples: FeatureExamples) -> str:
        ranked = self.ranked_phrases(examples.positives + examples.more_positives, examples.activations + examples.more_activations)
        if not ranked:
            return "no shared phrase"
        lexical = self.combined(ranked)
        if self.roundtrip is None:
            return lexical
        candidates = list(dict.fromkeys([lexical, *(r.spelling for r in ranked[:ROUNDTRIP_CANDIDATES])]))
        trips = self.roundtrip.trips(candidates, [examples.feature_id] * len(candidates))
        # The candidate whose embedding the feature ranks highest; ties (and none firing) keep the lexical order.
        best = min(range(len(candidates)), key=lambda i: (trips[i].rank is None, trips[i].rank or 0, i))
        return candidates[best]

    def combined(self, ranked: list[RankedPhrase]) -> str:
        """The best phrase, and a second one when it scores nearly as well and is distinct."""
        chosen = [ranked[0]]
        for candidate in ranked[1:]:
            if len(chosen) == self.max_phrases or candidate.score < SECOND_PHRASE * chosen[0].score:
                break
            if candidate.lift >= SECOND_LIFT and not any(set(candidate.key) & set(c.key) for c in chosen):
                chosen.append(candidate)
        return ", ".join(c.spelling for c in chosen)

    def predict(self, label: str, texts: list[str]) -> list[float]:
        return self.predictor.predict(label, texts)


INTERPRETER_PROMPT = """You are a meticulous {domain} researcher conducting an important investigation into one neuron \
of a sparse autoencoder trained on embeddings of {domain} paper abstracts. You are shown MAX_ACTIVATING abstracts, on \
which the neuron fires (with its activation), and ZERO_ACTIVATING abstracts, on which it does not fire.

Work step by step:
1. List the topics, concepts, themes and methodologies that the max-activating abstracts share, at several levels of \
granularity; give more weight to the abstracts with higher activations.
2. Rule out every candidate that is also present in the zero-activating abstracts.
3. Choose the simplest candidate that explains the activations (Occam's razor).
4. End your reply with one line: FINAL: <a label of 1 to 8 words>"""

PREDICTOR_PROMPT = """You are a {domain} expert. A neuron of a sparse autoencoder over {domain} abstracts has this \
description: "{label}".{family} You are shown one abstract.

1. Reason step by step about whether the neuron fires on this abstract; do not speculate beyond what the abstract says.
2. Give a confidence in [0, 1] if it will fire, or in [-1, 0] if it will not.
3. End your reply with one line: PREDICTION: <number between -1 and 1>"""

FAMILY_NOTE = " The neuron is highly general and fires on a family of related topics: related topics count."

FAMILY_NAMER_PROMPT = """You are a meticulous {domain} researcher. A family of sparse-autoencoder features has a parent \
feature and child features, each with a label. Name the family.

1. Brainstorm general concepts that cover the labels.
2. Pick the high-level concept that covers most of the children.
3. Do not add the field's name ("in astronomy", "in machine learning").
4. End your reply with one line: FINAL: <2 to 8 words>"""

SEPARATOR = "\n\n------------------------\n"


# Few-shot examples of the completion protocol (base models): one solved task each, in the shape
# of the real ones, on a topic of no corpus here, answered by the final line alone. Deviation
# from the paper, for base models only: no step-by-step reasoning before the answer (a 270M base
# model asked to reason ran past 48-256 tokens without ever writing the answer line).
INTERPRETER_SHOT = (
    "MAX_ACTIVATING:\nActivation:4.210\nSourdough fermentation. Wild yeasts and lactic acid bacteria leaven rye doughs..."
    "\n------------------------\nActivation:3.870\nStarter cultures for bread. We compare sourdough starters...\n\n"
    "ZERO_ACTIVATING:\nTide pools. Rock pool invertebrates under heat stress...",
    "FINAL: sourdough fermentation",
)
PREDICTOR_SHOTS = (
    ('Description: "sourdough fermentation"\nAbstract:\nStarter cultures for bread. We compare sourdough starters...',
     "PREDICTION: 0.9"),
    ('Description: "sourdough fermentation"\nAbstract:\nTide pools. Rock pool invertebrates under heat stress...',
     "PREDICTION: -0.8"),
)
FAMILY_SHOT = ("Parent: bread\nChildren:\n- sourdough fermentation\n- rye doughs\n- bread crust", "FINAL: bread making")
COMPLETION_PREDICTOR = """You are a {domain} expert. A neuron of a sparse autoencoder fires on abstracts that match its \
description. For the abstract, answer with one line: PREDICTION: a number from -1 (does not fire) to 1 (fires)."""


class LLMLabeller:
    """The paper's interpreter and predictor through an OpenAI-compatible endpoint (the chat
    protocol; base models: the completion protocol with one solved example per task).

    A reply that does not follow the protocol is never a label (``saedb.llm``); a predictor
    with no well-formed reply after 3 tries scores 0.0 (the paper's rule: "no opinion", which
    neither side of F1's threshold counts as firing), and is counted as malformed."""

    def __init__(self, chat: ChatModel, domain: str = "scientific", family: bool = False) -> None:
        self.name = f"llm:{chat.model}" + (":completion" if chat.protocol == "completion" else "")
        self.chat = chat
        self.domain = domain
        self.family = family

    def shots(self, *examples: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return examples if self.chat.protocol == "completion" else ()

    def label(self, examples: FeatureExamples) -> str:
        shown = SEPARATOR.join(f"Activation:{a:.3f}\n{t[:2000]}" for a, t in zip(examples.activations, examples.positives))
        zero = SEPARATOR.join(t[:2000] for t in examples.negatives)
        user = f"MAX_ACTIVATING:\n{shown}\n\nZERO_ACTIVATING:\n{zero}"
        system = INTERPRETER_PROMPT.format(domain=self.domain)
        return self.chat.ask_parsed(system, user, lambda reply: label_answer(reply, system),
                                    examples=self.shots(INTERPRETER_SHOT))

    def predict_one(self, label: str, text: str) -> float:
        if self.chat.protocol == "completion":
            system, user = COMPLETION_PREDICTOR.format(domain=self.domain), f'Description: "{label}"\nAbstract:\n{text[:3000]}'
        else:
            system = PREDICTOR_PROMPT.format(domain=self.domain, label=label, family=FAMILY_NOTE if self.family else "")
            user = f"Abstract:\n{text[:3000]}"
        try:
            return self.chat.ask_parsed(system, user, prediction, examples=self.shots(*PREDICTOR_SHOTS))
        except MalformedReplyError:
            return 0.0

    def predict(self, label: str, texts: list[str]) -> list[float]:
        return [self.predict_one(label, t) for t in texts]

    def name_family(self, parent: str, children: list[str]) -> str:
        user = f"Parent: {parent}\nChildren:\n" + "\n".join(f"- {c}" for c in children)
        system = FAMILY_NAMER_PROMPT.format(domain=self.domain)
        return self.chat.ask_parsed(system, user, lambda reply: label_answer(reply, system),
                                    examples=self.shots(FAMILY_SHOT))

    def flush_responses(self) -> None:
        """Write the replies cached since the last call (from the thread that owns the connection)."""
        if self.chat.cache is not None:
            self.chat.cache.flush()
