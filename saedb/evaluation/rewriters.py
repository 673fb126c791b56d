"""Query rewriting, the baseline that steering is compared with (paper-notes §5.3)."""

from __future__ import annotations

from typing import Callable, Protocol

from saedb.errors import InvalidInputError
from saedb.evaluation.topics import Topic
from saedb.interp.text import STOPWORDS, words
from saedb.llm import ChatModel, final_answer


class Rewriter(Protocol):
    name: str

    def rewrite(self, query: str, up: Topic, down: Topic) -> str: ...


class NaiveAppendRewriter:
    """A naive baseline, not query rewriting: '<query> and <up>'. It cannot down-weight a
    topic without an LLM (appending 'not X' moves a bag-of-words embedding towards X)."""

    name = "naive-append"

    def rewrite(self, query: str, up: Topic, down: Topic) -> str:
        return f"{query} and {up.name}"


class OfflineRewriter:
    """A rewrite without an LLM that does both halves of the paper's instruction: drop the
    query's words that the down topic's name uses (compared in normal form, so 'galaxies'
    goes with 'galaxy') and append 'and <up>'. A query made only of such words is kept whole."""

    name = "offline-rewrite"

    def rewrite(self, query: str, up: Topic, down: Topic) -> str:
        dropped = {w for w in words(down.name) if w not in STOPWORDS}
        kept = [token for token in query.split() if not (set(words(token)) & dropped)]
        return f"{' '.join(kept) if kept else query} and {up.name}"


REWRITE_SYSTEM = "You rewrite search queries for a scientific paper search engine."


def rewrite_prompt(query: str, up: Topic, down: Topic) -> str:
    """The paper's rewriting prompt: down-weight X, append 'and Y', change the query little."""
    return (
        f"Original query: {query}\n\n"
        f"Rewrite the query so that its results are less about the topic '{down.name}' and also about the topic "
        f"'{up.name}'. Down-weight '{down.name}' and add the new topic in the form '<original query> and {up.name}'. "
        "Do not change the query too much otherwise.\n"
        "End with one line: FINAL: <the rewritten query>"
    )


class LLMRewriter:
    def __init__(self, chat: ChatModel) -> None:
        self.name = f"llm:{chat.model}"
        self.chat = chat

    def rewrite(self, query: str, up: Topic, down: Topic) -> str:
        prompt = rewrite_prompt(query, up, down)
        return self.chat.ask_parsed(REWRITE_SYSTEM, prompt, lambda reply: final_answer(reply, max_words=80))


def get_rewriter(spec: str, chat: Callable[[str], ChatModel] = ChatModel) -> Rewriter:
    """``naive-append``, ``offline-rewrite`` or ``llm:MODEL`` (OPENAI_BASE_URL; ``chat`` makes its client)."""
    kind, _, name = spec.partition(":")
    if spec == NaiveAppendRewriter.name:
        return NaiveAppendRewriter()
    if spec == OfflineRewriter.name:
        return OfflineRewriter()
    if kind == "llm" and name:
        return LLMRewriter(chat(name))
    raise InvalidInputError(f"unknown rewriter {spec!r}: use naive-append, offline-rewrite or llm:MODEL")
