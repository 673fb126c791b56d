"""Text statistics for the offline labeller: candidate phrases and corpus document frequencies.

Phrases are RAKE-style: runs of content words between stopwords and punctuation, of 1 to 3
words, compared in a light normal form (lower case, one common suffix removed) and shown in
the surface form the abstracts use most ("graph neural networks", "LSTM").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

SUFFIXES = (("ations", "at"), ("ation", "at"), ("ates", "at"), ("ate", "at"), ("ities", ""), ("ity", ""), ("ings", ""),
            ("ing", ""), ("ions", ""), ("ion", ""), ("ments", ""), ("ment", ""), ("ness", ""), ("ages", ""), ("age", ""),
            ("ally", ""), ("ical", ""), ("ies", "y"), ("ed", ""), ("es", ""), ("al", ""), ("ly", ""), ("s", ""), ("e", ""))


@lru_cache(maxsize=1 << 17)  # a corpus's vocabulary; labelling a model stems millions of words
def normal_form(word: str) -> str:
    """A light stem: lower case, one common suffix removed while 4+ letters remain
    ('Networks' -> 'network', 'duality' -> 'dual', 'covering' -> 'cover')."""
    w = word.lower().replace("'", "")
    if w.isalpha() and not w.endswith(("ss", "us", "is")):
        for suffix, replacement in SUFFIXES:
            if w.endswith(suffix) and len(w) - len(suffix) >= 4:
                return w[: -len(suffix)] + replacement
    return w


# Function words and the boilerplate of abstracts: they end a phrase.
STOPWORDS = frozenset(
    """a about above across after again against all almost along also although always among an and another any
    are around as at be because been before being below between both but by can cannot could did do does doing
    done due during each either et etc even ever every for from further furthermore had has have having here how
    however i ie eg if in including into is it its itself just may moreover much must neither no nor not now of
    off often on once onto or other others otherwise our ours out over own per perhaps rather she should since so
    some such than that the their them themselves then there thereby therefore these they this those though
    through thus to together too toward towards under unlike until upon us via was we were what whatever when
    where whereas whether which while who whom whose why will with within without would yet paper propose proposes
    proposed present presents presented show shows shown showing demonstrate demonstrates demonstrated find finds
    found report reported provide provides provided obtain obtained achieve achieves achieved allow allows
    allowing use uses used using well apply applies applied applying""".split()
)
# Words too general to be a topic alone; they may be part of one ("language model", "neural network").
GENERIC = frozenset(normal_form(w) for w in
    """approach approaches method methods model models data result results study studies work new novel based
    different various recent recently large small high low problem problems performance significant significantly
    existing state art main two three one first second effective efficient better best number case cases order
    general particular important information set sets analysis task tasks system systems framework technique
    techniques algorithm algorithms application applications experiment experiments experimental dataset datasets
    several many most more less least possible available given able same simple current previous standard
    common wide various both type types way ways process term terms problem value values level levels""".split()
)
TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9\-']*[A-Za-z0-9]|[A-Za-z]|[.,;:!?()\[\]{}\"]")
MAX_WORDS = 3


def content_runs(text: str) -> list[list[str]]:
    """Runs of content words (original spelling) between stopwords and punctuation."""
    runs, current = [], []
    for token in TOKEN.findall(text):
        if not token[0].isalpha() or token.lower() in STOPWORDS or len(token) < 2:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    if current:
        runs.append(current)
    return runs


def phrases(text: str) -> dict[tuple[str, ...], str]:
    """Every 1-3 word phrase of a text in normal form with one surface spelling of it; a
    phrase made only of generic words is none."""
    found: dict[tuple[str, ...], str] = {}
    for run in content_runs(text):
        keys = [normal_form(w) for w in run]
        for size in range(1, MAX_WORDS + 1):
            for start in range(len(run) - size + 1):
                key = tuple(keys[start : start + size])
                if not all(k in GENERIC for k in key):
                    found.setdefault(key, " ".join(run[start : start + size]))
    return found


def words(text: str) -> list[str]:
    """All words of a text in normal form, in order (stopwords kept: phrase matching needs order)."""
    return [normal_form(t) for t in TOKEN.findall(text) if t[0].isalpha()]


@dataclass(frozen=True)
class CorpusStats:
    """Document frequencies of phrases over a corpus (or a sample of it)."""

    documents: int
    frequency: Counter  # phrase key -> documents containing it

    @classmethod
    def build(cls, texts: Iterable[str]) -> "CorpusStats":
        frequency: Counter = Counter()
        documents = 0
        for text in texts:
            frequency.update(phrases(text).keys())
            documents += 1
        return cls(documents=documents, frequency=frequency)

    def share(self, key: tuple[str, ...]) -> float:
        """Smoothed share of documents containing the phrase."""
        return (self.frequency.get(key, 0) + 0.5) / (self.documents + 1.0)

    def idf(self, word: str) -> float:
        return math.log(1.0 / self.share((word,)))


def _display_word(word: str) -> str:
    """Lower case unless the word has capitals past its first letter (LSTM, GANs, fMRI)."""
    return word if any(c.isupper() for c in word[1:]) else word.lower()


def surface_form(spellings: Sequence[str]) -> str:
    """The spelling to show: the most common one once Title Case and sentence starts are
    lowered (acronyms keep their case)."""
    counts: Counter = Counter()
    for spelling, times in Counter(spellings).items():  # each distinct spelling displayed once
        counts[" ".join(_display_word(w) for w in spelling.split())] += times
    return max(counts, key=lambda s: (counts[s], s))
