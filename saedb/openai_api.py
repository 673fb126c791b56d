"""The one place that builds the OpenAI client and turns its errors into saedb's, for every
OpenAI-compatible call (chat and completions in ``llm``, embeddings in ``embedders``).

Rules: ``base_url`` or OPENAI_BASE_URL, ``api_key`` or OPENAI_API_KEY; server errors and
timeouts are retried by the client with exponential backoff; what is left after the retries
is an ``LLMUnavailableError`` naming the endpoint and what to do, recognised by the openai
exception's class, never by its text."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from saedb.errors import ConfigurationError


class LLMUnavailableError(ConfigurationError):
    """The endpoint cannot be reached, refuses the request or does not serve the model."""


def openai_client(base_url: str | None = None, api_key: str | None = None, timeout_s: float | None = None,
                  max_retries: int = 3):
    """The OpenAI client of every saedb call; a server that is not there fails in seconds."""
    from openai import OpenAI

    options = {} if timeout_s is None else {"timeout": timeout_s}
    return OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
                  api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused", max_retries=max_retries, **options)


@contextlib.contextmanager
def endpoint_errors(client, model: str) -> Iterator[None]:
    """Requests inside raise LLMUnavailableError (with the endpoint's URL) instead of openai's errors."""
    import openai

    url = str(client.base_url).rstrip("/")
    try:
        yield
    except openai.APITimeoutError:  # a subclass of APIConnectionError: the endpoint is there, and slow
        raise LLMUnavailableError(f"the endpoint at {url} did not answer within {client.timeout} s (after retries): "
                                  "it is reachable but slow; raise --timeout, or ask for fewer requests at once") from None
    except openai.APIConnectionError as exc:
        raise LLMUnavailableError(f"cannot reach the endpoint at {url} ({exc}): start an OpenAI-compatible server "
                                  "there (saedb llm), or point OPENAI_BASE_URL at one") from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise LLMUnavailableError(f"the endpoint at {url} refused the request ({exc.status_code}): set OPENAI_API_KEY "
                                  "to a key it accepts") from None
    except openai.NotFoundError:
        raise LLMUnavailableError(f"the endpoint at {url} has no model {model!r} (404): name a model it serves") from None
    except openai.APIStatusError as exc:
        raise LLMUnavailableError(f"the endpoint at {url} answered {exc.status_code} after retries: "
                                  f"{str(exc.message)[:200]}") from None
