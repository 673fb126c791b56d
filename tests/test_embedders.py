"""Embedders: the shipped static model, real MiniLM, and the OpenAI client against a local HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator

import numpy as np
import pytest

from saedb.embedders import MiniLMEmbedder, OpenAIEmbedder, get_embedder
from saedb.errors import ConfigurationError, InvalidInputError
from saedb.openai_api import LLMUnavailableError

TEXTS = [
    "Dark matter halos in cosmological N-body simulations",
    "N-body simulations of dark matter halo formation",
    "Transformers for neural machine translation",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_wordllama_is_unit_norm_deterministic_and_semantic(embedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(vectors, embedder.embed(TEXTS))
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_minilm_is_the_real_384d_model() -> None:
    vectors = MiniLMEmbedder().embed(TEXTS)
    assert vectors.shape == (3, 384)
    assert cosine(vectors[0], vectors[1]) > 0.7 > 0.2 > cosine(vectors[0], vectors[2])


class FakeEmbeddingsAPI(BaseHTTPRequestHandler):
    """A local OpenAI-compatible /v1/embeddings endpoint: vectors derived from the text."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEmbeddingsAPI.requests.append(body)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(text)), float(text.count("a")), 1.0]}
            for i, text in enumerate(body["input"])
        ]
        payload = json.dumps({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), FakeEmbeddingsAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_openai_embedder_batches_and_normalises(api_url: str) -> None:
    FakeEmbeddingsAPI.requests.clear()
    embedder = OpenAIEmbedder("local-model", base_url=api_url, api_key="test")
    embedder.batch_size = 2
    vectors = embedder.embed(["abc", "aaaa", "b"])
    assert [len(r["input"]) for r in FakeEmbeddingsAPI.requests] == [2, 1]
    expected = np.array([[3, 1, 1], [4, 4, 1], [1, 0, 1]], np.float32)
    np.testing.assert_allclose(vectors, expected / np.linalg.norm(expected, axis=1, keepdims=True), rtol=1e-6)
    assert embedder.dim == 3  # probed from the server for a model with no known size


def test_unknown_or_unconfigured_embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match="unknown embedder 'nope'"):
        get_embedder("nope")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        get_embedder("openai:text-embedding-3-small")


class RefusingAPI(BaseHTTPRequestHandler):
    """An endpoint that refuses every key (401) or has no such model (404), by path."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        status = 404 if "missing" in self.path else 401
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": {"message": "no", "type": "invalid_request_error"}}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("path", "says"), [("/v1", "refused the request (401)"), ("/missing/v1", "has no model 'local-model' (404)")])
def test_an_embeddings_endpoint_that_refuses_is_a_clear_saedb_error(path: str, says: str) -> None:
    """The same error classes and texts as the chat model's: the CLI prints one line, no traceback."""
    server = HTTPServer(("127.0.0.1", 0), RefusingAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}{path}"
        with pytest.raises(LLMUnavailableError, match=f"the endpoint at {url} {says.replace('(', '.').replace(')', '.')}"):
            OpenAIEmbedder("local-model", base_url=url, api_key="test").embed(["abc"])
    finally:
        server.shutdown()
        server.server_close()


def test_a_local_embedder_is_loaded_once_per_process() -> None:
    """Issue 51: five `db.search(text)` calls loaded MiniLM's weights five times (230-630 ms each)."""
    from saedb.embedders import get_embedder

    assert get_embedder("wordllama-256") is get_embedder("wordllama-256")
    assert get_embedder("minilm") is get_embedder("minilm")
