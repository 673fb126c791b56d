"""The one place that talks to an OpenAI-compatible chat endpoint (any ``base_url``)."""

from __future__ import annotations

import os
import re

from saedb.errors import ConfigurationError, InvalidInputError

FINAL = re.compile(r"FINAL\s*:\s*(.+)", re.IGNORECASE)
PREDICTION = re.compile(r"PREDICTION\s*:\s*\**\s*([-+]?\d*\.?\d+)", re.IGNORECASE)


class LLMUnavailableError(ConfigurationError):
    """The chat endpoint cannot be reached, refuses the request or does not serve the model."""


class ChatModel:
    """A chat model at temperature 0 behind ``base_url`` (default: OPENAI_BASE_URL)."""

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout_s: float = 120) -> None:
        from openai import OpenAI

        self.model = model
        self.client = OpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused",
            max_retries=2,  # with backoff; a server that is not there fails in seconds, not half a minute
            timeout=timeout_s,
        )

    def ask(self, system: str, user: str, max_tokens: int = 1024) -> str:
        """The model's reply; an endpoint that cannot be reached or refuses (after the client's
        retries) is an LLMUnavailableError naming the URL and what to do."""
        import openai

        url = str(self.client.base_url).rstrip("/")
        try:
            response = self.client.chat.completions.create(
                model=self.model, temperature=0, max_tokens=max_tokens,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            )
        except openai.APIConnectionError as exc:  # also timeouts
            raise LLMUnavailableError(f"cannot reach the chat endpoint at {url} ({exc}): start an OpenAI-compatible server "
                                      "there, or point OPENAI_BASE_URL at one") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise LLMUnavailableError(f"the chat endpoint at {url} refused the request ({exc.status_code}): set OPENAI_API_KEY "
                                      "to a key it accepts") from None
        except openai.NotFoundError:
            raise LLMUnavailableError(f"the chat endpoint at {url} has no model {self.model!r} (404): name a model it serves") from None
        except openai.APIStatusError as exc:
            raise LLMUnavailableError(f"the chat endpoint at {url} answered {exc.status_code} after retries: "
                                      f"{str(exc.message)[:200]}") from None
        return response.choices[0].message.content or ""


def final_answer(reply: str, max_words: int = 8) -> str:
    """The text after the last 'FINAL:', without '*' or quotes, at most ``max_words`` words."""
    found = FINAL.findall(reply)
    if not found:
        raise InvalidInputError(f"the reply has no 'FINAL:' line: {reply[-200:]!r}")
    words = found[-1].replace("*", "").strip().strip("\"'`").rstrip(".").split()
    if not words:
        raise InvalidInputError("the reply's FINAL line is empty")
    return " ".join(words[:max_words])


def prediction(reply: str) -> float:
    """The number after the last 'PREDICTION:', clipped to [-1, 1]."""
    found = PREDICTION.findall(reply)
    if not found:
        raise InvalidInputError(f"the reply has no 'PREDICTION: <number>' line: {reply[-200:]!r}")
    return max(-1.0, min(1.0, float(found[-1])))


def retried(call, attempts: int = 3):
    """Call again on a malformed reply (HTTP errors are retried by the client itself)."""
    for attempt in range(attempts):
        try:
            return call()
        except InvalidInputError:
            if attempt == attempts - 1:
                raise
