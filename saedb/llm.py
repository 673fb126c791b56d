"""Asking a model at an OpenAI-compatible endpoint (any ``base_url``; the client and its errors
come from ``openai_api``).

Rules:
- a reply is parsed by the caller's parser; a reply that is empty, has no answer line, echoes
  one of the prompt's ``<placeholders>``, copies a solved example's answer, or (for labels)
  repeats the prompt's own instruction text is malformed (``MalformedReplyError``) and is asked again with a reminder (a new prompt:
  at temperature 0 the same prompt gets the same reply), at most ``attempts`` times;
- every reply is counted; once ``VERDICT_AFTER`` replies are in and more than half of them
  were malformed, the run stops (``ProtocolError``: "this model does not follow the protocol");
- well-formed replies (never an empty or malformed one) are cached by model + protocol +
  prompt (``ResponseCache``), so a rerun or a resumed run asks nothing it was answered
  before; requests, cache hits, tokens and seconds are counted;
- ``protocol``: "chat" (the paper's, /v1/chat/completions) or "completion" (/v1/completions
  with few-shot examples, for base models without a chat template).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Sequence, TypeVar

from saedb.errors import ConfigurationError, InvalidInputError
from saedb.localllm import MODELS
from saedb.openai_api import endpoint_errors, openai_client

if TYPE_CHECKING:
    from saedb.backends.base import Backend

FINAL = re.compile(r"FINAL\s*:\s*(.+)", re.IGNORECASE)
PREDICTION = re.compile(r"PREDICTION\s*:\s*\**\s*([-+]?\d*\.?\d+)", re.IGNORECASE)
PLACEHOLDER = re.compile(r"<[^<>\n]{2,120}>")
VERDICT_AFTER = 10  # replies before a run can be judged to ignore the protocol
REMINDER = "\n\nYour previous reply did not end with the required final line. End your reply with that line, filled in."

Protocol = Literal["chat", "completion"]
T = TypeVar("T")


class MalformedReplyError(InvalidInputError):
    """A reply that does not follow the protocol: no answer line, a placeholder, an echo."""


class ProtocolError(ConfigurationError):
    """Most replies of a run were malformed: the model does not follow the protocol."""


@dataclass
class ReplyCounts:
    replies: int = 0
    malformed: int = 0
    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> str:
        return (f"{self.replies} LLM replies, {self.malformed} malformed; {self.requests} requests "
                f"({self.cached} answered from the cache), {self.prompt_tokens} prompt + {self.completion_tokens} "
                f"completion tokens, {self.seconds:.0f} s")


@dataclass(frozen=True)
class Reply:
    key: str  # the cache key: model protocol, token budget, prompt and examples
    text: str
    cached: bool
    tokens: int = 0  # completion tokens of the request (0 from the cache)


class ResponseCache:
    """Replies by key, loaded from the database's ``llm_responses`` and written back by
    ``flush`` (from the thread that owns the connection)."""

    def __init__(self, backend: "Backend", model: str) -> None:
        self.backend = backend
        self.known = dict(backend.query("SELECT prompt_sha, reply FROM llm_responses WHERE model = ?", (model,)))
        self.model = model
        self.pending: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self.lock:
            return self.known.get(key)

    def put(self, key: str, reply: str, tokens: int) -> None:
        with self.lock:
            if key not in self.known:
                self.known[key] = reply
                self.pending.append((key, reply, tokens))

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, []
        for key, reply, tokens in pending:
            self.backend.execute("INSERT INTO llm_responses (model, prompt_sha, reply, completion_tokens) VALUES (?, ?, ?, ?) "
                                 "ON CONFLICT DO NOTHING", (self.model, key, reply, tokens))


class ChatModel:
    """A model at temperature 0 behind ``base_url`` (default: OPENAI_BASE_URL)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout_s: float = 120,
                 max_tokens: int = 512, protocol: Protocol = "chat", cache: ResponseCache | None = None) -> None:
        if protocol not in ("chat", "completion"):
            raise InvalidInputError(f"protocol must be chat or completion, not {protocol!r}")
        self.model, self.max_tokens, self.protocol, self.cache = model, max_tokens, protocol, cache
        self.counts = ReplyCounts()
        self.client = openai_client(base_url, api_key, timeout_s)

    @property
    def url(self) -> str:
        return str(self.client.base_url).rstrip("/")

    def ask(self, system: str, user: str, examples: Sequence[tuple[str, str]] = ()) -> Reply:
        """The model's reply (from the cache when asked before); an endpoint that
        cannot be reached or refuses (after the client's retries) is an LLMUnavailableError
        naming the URL and what to do. ``examples`` (user, reply) are the completion protocol's
        few shots. Nothing is cached here: ``ask_parsed`` caches well-formed replies only."""
        key = hashlib.sha256(json.dumps([self.protocol, self.max_tokens, system, user, list(examples)]).encode()).hexdigest()
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            with self.counts.lock:
                self.counts.cached += 1
            return Reply(key, cached, cached=True)
        started = time.perf_counter()
        reply, usage = self._request(system, user, examples)
        with self.counts.lock:
            self.counts.requests += 1
            self.counts.seconds += time.perf_counter() - started
            if usage is not None:
                self.counts.prompt_tokens += usage.prompt_tokens or 0
                self.counts.completion_tokens += usage.completion_tokens or 0
        return Reply(key, reply, cached=False, tokens=(usage.completion_tokens or 0) if usage is not None else 0)

    def ask_parsed(self, system: str, user: str, parse: Callable[[str], T], attempts: int = 3,
                   examples: Sequence[tuple[str, str]] = ()) -> T:
        """``parse`` of the first well-formed reply; MalformedReplyError after ``attempts``. A
        reply is malformed when empty, when it repeats a ``<placeholder>`` of the prompt, when
        ``parse`` refuses it, or when its answer copies a solved example's answer or text that
        the task does not have (``echoes_example``). Only well-formed replies are cached."""
        for attempt in range(attempts):
            asked = self.ask(system, user + REMINDER * (attempt > 0), examples)
            reply = asked.text
            try:
                if not reply.strip():
                    raise MalformedReplyError("the reply is empty")
                echoed = {p for p in PLACEHOLDER.findall(reply[-300:]) if p in system + user}
                if echoed:
                    raise MalformedReplyError(f"the reply repeats the prompt's placeholder {sorted(echoed)[0]}")
                value = parse(reply)
                if isinstance(value, str) and examples and echoes_example(value, examples, user):
                    raise MalformedReplyError(f"the reply copies the prompt's solved example: {value!r}")
                self._count(malformed=False)
                if self.cache is not None and not asked.cached:
                    self.cache.put(asked.key, reply, asked.tokens)
                return value
            except MalformedReplyError:
                self._count(malformed=True)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _count(self, malformed: bool) -> None:
        with self.counts.lock:
            self.counts.replies += 1
            self.counts.malformed += malformed
            replies, bad = self.counts.replies, self.counts.malformed
        if replies >= VERDICT_AFTER and 2 * bad > replies:
            raise ProtocolError(f"this model does not follow the protocol: {bad} of {replies} replies malformed "
                                f"({self.model} at {self.url}, protocol {self.protocol}); nothing malformed was stored. "
                                "Use a model that follows instructions, or --protocol completion for a base model")

    def _request(self, system: str, user: str, examples: Sequence[tuple[str, str]]):  # -> (text, usage)
        with endpoint_errors(self.client, self.model):
            if self.protocol == "chat":
                response = self.client.chat.completions.create(
                    model=self.model, temperature=0, max_tokens=self.max_tokens,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                )
                return response.choices[0].message.content or "", response.usage
            prompt, key = completion_prompt(system, user, examples)
            response = self.client.completions.create(model=self.model, temperature=0, max_tokens=self.max_tokens,
                                                      prompt=prompt, stop=["\n", STOP])
            return key + (response.choices[0].text or ""), response.usage


STOP = "\n###"


def completion_prompt(system: str, user: str, examples: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """A few-shot text prompt for a base model, and the answer's key: the instructions, solved
    examples whose answers are one line ('FINAL: ...'), then the task with its answer begun by
    that key, so the model only has to write the value (a base model asked to reason first ran
    past its tokens without an answer line). The reply is the key plus the model's one line."""
    key = examples[-1][1].split(":", 1)[0] + ":" if examples else ""
    shots = "".join(f"\n###\nTask:\n{question}\nAnswer:\n{answer}\n" for question, answer in examples)
    return f"{system}\n{shots}\n###\nTask:\n{user}\nAnswer:\n{key}", key


def final_answer(reply: str, max_words: int = 8, instructions: str | None = None) -> str:
    """The text after the last 'FINAL:', without '*' or quotes, at most ``max_words`` words; a
    reply that only repeats the ``instructions`` (two or more of their words in a row) is malformed."""
    found = FINAL.findall(reply)
    if not found:
        raise MalformedReplyError(f"the reply has no 'FINAL:' line: {reply[-200:]!r}")
    words = found[-1].replace("*", "").strip().strip("\"'`").rstrip(".").split()
    if not words:
        raise MalformedReplyError("the reply's FINAL line is empty")
    answer = " ".join(words[:max_words])
    said, told = _words(answer), _words(instructions or "")
    if instructions is not None and len(said) >= 2 and f" {' '.join(said)} " in f" {' '.join(told)} ":
        raise MalformedReplyError(f"the reply repeats the prompt's instructions: {answer!r}")
    return answer


def label_answer(reply: str, instructions: str) -> str:
    """``final_answer`` as a label of 1-8 words: it must have a word of letters ('1.000', copied
    from an 'Activation:1.000' line, is none), no sentence break (a copied sentence is none) and
    no ``<placeholder>`` (any prompt's, not only this one's)."""
    label = final_answer(reply, 8, instructions)
    if not re.search(r"[A-Za-z]{2,}", label) or re.search(r"[.!?]\s", label) or PLACEHOLDER.search(label):
        raise MalformedReplyError(f"the reply's FINAL line is not a label: {label!r}")
    return label


def echoes_example(answer: str, examples: Sequence[tuple[str, str]], task: str) -> bool:
    """Whether an answer copies the few-shot examples: one of its words of 4+ letters, or the
    whole answer, stands in an example (question or answer) and not in the task ("sourdough
    fermentation", the solved example's label, given for an astrophysics feature)."""
    shown = set(_words(" ".join(q + " " + a for q, a in examples)))
    asked = set(_words(task))
    said = _words(answer)
    return any(len(w) >= 4 and w in shown and w not in asked for w in said) or (
        bool(said) and all(w in shown and w not in asked for w in said))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def prediction(reply: str) -> float:
    """The number after the last 'PREDICTION:', clipped to [-1, 1]."""
    found = PREDICTION.findall(reply)
    if not found:
        raise MalformedReplyError(f"the reply has no 'PREDICTION: <number>' line: {reply[-200:]!r}")
    return max(-1.0, min(1.0, float(found[-1])))


@dataclass(frozen=True)
class EndpointSettings:
    protocol: Protocol
    concurrency: int
    max_tokens: int
    timeout_s: float


def server_props(base_url: str | None) -> dict | None:
    """What an llama.cpp server says of itself (``/props``: slots, chat template); None elsewhere."""
    root = (base_url or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/").removesuffix("/v1")
    if not root.startswith("http"):
        return None
    try:
        with urllib.request.urlopen(f"{root}/props", timeout=3) as response:
            props = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return props if isinstance(props, dict) and "total_slots" in props else None


def on_this_machine(base_url: str | None) -> bool:
    """Whether the endpoint is a loopback address (a local server: assume one slot)."""
    from urllib.parse import urlparse

    host = urlparse(base_url or os.environ.get("OPENAI_BASE_URL") or "").hostname or ""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def endpoint_settings(base_url: str | None = None, protocol: str = "auto", concurrency: int | None = None,
                      max_tokens: int | None = None, timeout_s: float | None = None) -> EndpointSettings:
    """Options left unset get defaults fitted to the endpoint. A local server (an llama.cpp
    server that reports its slots, or any server on a loopback address) gets one request per
    reported slot (1 when it reports none), 256 tokens and 600 s per request (a small model on
    a CPU writes 15-60 tokens/s; the paper's 1,024 took 110 s a call), and the completion
    protocol when it has no chat template or serves a base model; other endpoints (hosted APIs)
    8 requests at once, 1,024 tokens, 120 s and the chat protocol."""
    props = server_props(base_url)
    if protocol == "auto":  # a server without a chat template, or serving a base model saedb knows (saedb llm)
        base = props is not None and (not props.get("chat_template") or getattr(MODELS.get(props.get("model_alias")), "base", False))
        protocol = "completion" if base else "chat"
    if protocol not in ("chat", "completion"):
        raise InvalidInputError(f"protocol must be auto, chat or completion, not {protocol!r}")
    local = props is not None or on_this_machine(base_url)
    slots = max(1, int(props["total_slots"])) if props is not None else 1
    return EndpointSettings(
        protocol,  # type: ignore[arg-type]
        concurrency or (slots if local else 8),
        max_tokens or (256 if local else 1024),
        timeout_s or (600.0 if local else 120.0),
    )


def record_run(backend: "Backend", task: str, chat: ChatModel) -> None:
    """Store the run's counts in ``llm_runs`` and its new replies in ``llm_responses``."""
    if chat.cache is not None:
        chat.cache.flush()
    c = chat.counts
    backend.execute(
        "INSERT INTO llm_runs (task, model, protocol, replies, malformed, requests, cached, prompt_tokens, completion_tokens, "
        "seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (task, chat.model, chat.protocol, c.replies, c.malformed, c.requests, c.cached, c.prompt_tokens, c.completion_tokens,
         c.seconds))
