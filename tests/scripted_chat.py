"""A scripted OpenAI-compatible /v1/chat/completions endpoint on loopback, for the LLM paths in CI."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class ScriptedChatHandler(BaseHTTPRequestHandler):
    """Subclasses implement ``reply(system, user) -> str`` (chat) and, for /v1/completions,
    ``complete(prompt) -> str``; ``props`` (if set) is served at /props as llama.cpp's server does."""

    props: dict | None = None

    def reply(self, system: str, user: str) -> str:
        raise NotImplementedError

    def complete(self, prompt: str) -> str:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/props" and self.props is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(self.props).encode())
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "prompt" in body:
            answer = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                      "choices": [{"index": 0, "finish_reason": "stop", "text": self.complete(body["prompt"])}]}
        else:
            content = self.reply(body["messages"][0]["content"], body["messages"][1]["content"])
            answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(answer).encode())

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[ScriptedChatHandler]) -> Iterator[str]:
    """The handler served on a free loopback port; yields the base URL (…/v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()
