"""The LLM path's rules against scripted OpenAI-compatible servers on loopback: a reply that
echoes the prompt is never stored, malformed replies are counted and stop a run that is mostly
malformed, a rerun asks nothing twice, a rewrite that is not a query is refused, base models
get the completion protocol, defaults follow the endpoint. (tests/test_llm_server.py runs the
same against a real llama.cpp server where one is installed.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from saedb.backends import Backend
from saedb.embedders import WordLlamaEmbedder
from saedb.evaluation.cases import Case, Query
from saedb.evaluation.report import format_table
from saedb.evaluation.rewriters import LLMRewriter
from saedb.evaluation.runner import EvalRun, ResultRow, checked_rewrite
from saedb.evaluation.topics import Topic
from saedb.interp import LLMLabeller, label_control, run_autointerp
from saedb.llm import ChatModel, MalformedReplyError, ProtocolError, ResponseCache, endpoint_settings
from tests.scripted_chat import ScriptedChatHandler, serving


class Echoing(ScriptedChatHandler):
    """A base model's replies to saedb's prompts, as issue 21 saw them: the placeholders echoed."""

    def reply(self, system: str, user: str) -> str:
        if "PREDICTION:" in system:
            return "PREDICTION: <number between -1 and 1>"
        return "FINAL: <a label of 1 to 8 words>"


class Instructed(ScriptedChatHandler):
    """Echoes the instruction text itself, without the brackets."""

    def reply(self, system: str, user: str) -> str:
        return "FINAL: a label of 1 to 8 words" if "MAX_ACTIVATING" in system else "PREDICTION: 0.5"


class Following(ScriptedChatHandler):
    """Follows the protocol; counts its requests."""

    requests = 0
    lock = threading.Lock()

    def reply(self, system: str, user: str) -> str:
        with Following.lock:
            Following.requests += 1
        if "MAX_ACTIVATING" in system:
            return f"The abstracts share one topic.\nFINAL: topic {len(user) % 7}"
        return "Reasoning.\nPREDICTION: " + ("0.8" if "star" in user.lower() else "-0.6")


def test_echoed_placeholders_are_never_stored_and_stop_the_run(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    for handler in (Echoing, Instructed):
        with serving(handler) as url:
            chat = ChatModel("base", base_url=url, api_key="x")
            with pytest.raises(ProtocolError, match=r"this model does not follow the protocol: \d+ of \d+ replies malformed"):
                run_autointerp(backend, model_id, LLMLabeller(chat), limit=20, concurrency=2)
        assert backend.query("SELECT count(*) FROM feature_labels")[0][0] == 0, handler.__name__
        assert chat.counts.malformed * 2 > chat.counts.replies >= 10


def test_a_rerun_asks_nothing_it_asked_before_and_the_control_reuses_the_cache(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    Following.requests = 0
    with serving(Following) as url:
        first = ChatModel("m", base_url=url, api_key="x", cache=ResponseCache(backend, "m"))
        labelled = run_autointerp(backend, model_id, LLMLabeller(first), limit=4, concurrency=2)
        label_control(backend, model_id, "llm:m", LLMLabeller(first))
        first.cache.flush()
        asked = Following.requests
        assert asked == first.counts.requests > 0 and first.counts.malformed == 0
        backend.execute("DELETE FROM feature_labels")
        again = ChatModel("m", base_url=url, api_key="x", cache=ResponseCache(backend, "m"))
        relabelled = run_autointerp(backend, model_id, LLMLabeller(again), limit=4, concurrency=2)
        label_control(backend, model_id, "llm:m", LLMLabeller(again))
    assert Following.requests == asked and again.counts.requests == 0 and again.counts.cached == first.counts.replies
    assert [(r.feature_id, r.label, r.pearson) for r in relabelled] == [(r.feature_id, r.label, r.pearson) for r in labelled]


class Rewriting(ScriptedChatHandler):
    answer = ""

    def reply(self, system: str, user: str) -> str:
        return Rewriting.answer


def test_a_rewrite_that_is_not_a_query_is_refused_with_a_warning_in_the_table() -> None:
    embedder = WordLlamaEmbedder()
    text = "dark matter halos in cosmological simulations"
    up, down = Topic("galaxy clusters", (1,)), Topic("dark matter", (2,))
    case = Case(Query(text), embedder.embed([text])[0], up, down, (up, down))
    with serving(Rewriting) as url:
        rewriter = LLMRewriter(ChatModel("m", base_url=url, api_key="x"))
        Rewriting.answer = "FINAL: dark matter halos in cosmological simulations and galaxy clusters"
        assert checked_rewrite(embedder, rewriter, case) is not None
        for garbage in ("FINAL: <the rewritten query> mendatang", "FINAL: quarterly revenue of retail banks", "no answer"):
            Rewriting.answer = garbage
            assert checked_rewrite(embedder, rewriter, case) is None, garbage
    rows = [ResultRow("unmodified", 0.0, 0.0, 10, 1.0, 0.2, 0.2, 0), ResultRow("rewrite:llm:m", None, None, 7, 0.8, 0.4, 0.1, 0)]
    table = format_table(EvalRun(1, "categories", "llm:m", "q", 10, 0, "small", rows))
    assert "warning: 3 of 10 rewrites refused" in table


class BaseModel(ScriptedChatHandler):
    """An llama.cpp server with a base model: no chat template, one slot, text completions only."""

    props = {"total_slots": 1, "chat_template": ""}
    prompts: list[str] = []

    def complete(self, prompt: str) -> str:
        BaseModel.prompts.append(prompt)
        task = prompt.rsplit("Task:\n", 1)[1]
        if "MAX_ACTIVATING" in task:
            return " stellar physics"  # the prompt ends with the answer's key: the model writes the value
        return " 0.7" if "star" in task.lower() else " -0.5"


def test_a_base_model_gets_the_completion_protocol_with_examples(trained: tuple[Backend, int]) -> None:
    backend, model_id = trained
    BaseModel.prompts = []
    with serving(BaseModel) as url:
        settings = endpoint_settings(url)
        assert (settings.protocol, settings.concurrency, settings.max_tokens) == ("completion", 1, 256)
        chat = ChatModel("gemma", base_url=url, api_key="x", protocol=settings.protocol, max_tokens=settings.max_tokens)
        labelled = run_autointerp(backend, model_id, LLMLabeller(chat), limit=2, concurrency=settings.concurrency)
    assert {r.label for r in labelled} == {"stellar physics"} and chat.counts.malformed == 0
    assert backend.query("SELECT DISTINCT labeller FROM feature_labels") == [("llm:gemma:completion",)]
    interpreter = next(p for p in BaseModel.prompts if "MAX_ACTIVATING" in p.rsplit("Task:\n", 1)[1])
    assert "FINAL: sourdough fermentation" in interpreter  # the solved example, before the task
    assert interpreter.endswith("Answer:\nFINAL:")


def test_a_local_server_that_reports_no_slots_gets_one_request_at_a_time() -> None:
    """Issue 33: a 1-slot server without /props was sent 8 requests at once with 1,024 tokens."""
    with serving(Following) as url:  # no /props: not llama.cpp's, but on this machine
        assert endpoint_settings(url) == endpoint_settings(url, "auto", None, None, None)
        settings = endpoint_settings(url)
        assert (settings.protocol, settings.concurrency, settings.max_tokens, settings.timeout_s) == ("chat", 1, 256, 600.0)
        assert endpoint_settings(url, "completion", 2, 64, 5.0).concurrency == 2
    with pytest.raises(Exception, match="protocol must be"):
        endpoint_settings(None, "telepathy")


class EmptyThenFollowing(ScriptedChatHandler):
    """Answers an empty HTTP-200 reply to every interpreter prompt without the reminder, then follows."""

    def reply(self, system: str, user: str) -> str:
        if "MAX_ACTIVATING" in system:
            return "Reasoning.\nFINAL: stellar spectra" if "did not end with" in user else ""
        return "PREDICTION: " + ("0.8" if "spectr" in user.lower() else "-0.6")


def test_an_empty_or_malformed_reply_is_never_cached(trained: tuple[Backend, int]) -> None:
    """Issue 33: 17 empty replies were cached in llm_responses, so a rerun would replay them."""
    backend, model_id = trained
    with serving(EmptyThenFollowing) as url:
        chat = ChatModel("m", base_url=url, api_key="x", cache=ResponseCache(backend, "m"))
        run_autointerp(backend, model_id, LLMLabeller(chat), limit=2, concurrency=1)
    assert chat.counts.malformed == 2 and chat.counts.replies > 2
    replies = [r[0] for r in backend.query("SELECT reply FROM llm_responses WHERE model = 'm'")]
    stored = chat.counts.replies - chat.counts.malformed - chat.counts.cached  # a cached reply was stored once already
    assert len(replies) == stored and all(r.strip() for r in replies)


class CopyingBaseModel(BaseModel):
    """A base model that answers every interpreter task with the solved example's label."""

    def complete(self, prompt: str) -> str:
        task = prompt.rsplit("Task:\n", 1)[1]
        return " sourdough fermentation" if "MAX_ACTIVATING" in task else (" 0.7" if "star" in task.lower() else " -0.5")


def test_a_label_that_copies_the_solved_example_is_malformed_and_never_stored(trained: tuple[Backend, int]) -> None:
    """Issue 33: SmolLM2 under the completion protocol labelled 5 of 8 features "sourdough fermentation"."""
    from saedb.llm import echoes_example
    from saedb.interp.labellers import INTERPRETER_SHOT

    backend, model_id = trained
    with serving(CopyingBaseModel) as url:
        chat = ChatModel("gemma", base_url=url, api_key="x", protocol="completion", max_tokens=48)
        with pytest.raises(ProtocolError, match="replies malformed"):
            run_autointerp(backend, model_id, LLMLabeller(chat), limit=8, concurrency=1)
    assert backend.query("SELECT count(*) FROM feature_labels")[0][0] == 0
    assert echoes_example("sourdough", [INTERPRETER_SHOT], "stellar winds") and echoes_example(
        "bread making", [("Bread crust.", "FINAL: bread")], "stars")
    assert not echoes_example("stellar activity", [INTERPRETER_SHOT], "activity of stellar cores")
    assert not echoes_example("fermentation in yeast", [INTERPRETER_SHOT], "yeast fermentation kinetics")


class ConstantPredictor(ScriptedChatHandler):
    """Labels in form; predicts 0.9 for every abstract (SmolLM2's 84 of 84 replies)."""

    def reply(self, system: str, user: str) -> str:
        return f"FINAL: topic {len(user) % 7}" if "MAX_ACTIVATING" in system else "PREDICTION: 0.9"


def test_a_predictor_with_one_answer_for_every_abstract_stops_the_run_and_stores_nothing(trained: tuple[Backend, int]) -> None:
    from saedb.interp.autointerp import CONSTANT_AFTER, ConstantPredictorError

    backend, model_id = trained
    with serving(ConstantPredictor) as url:
        chat = ChatModel("m", base_url=url, api_key="x")
        with pytest.raises(ConstantPredictorError, match=r"scored all \d+ abstracts \+0.90: it is not a predictor"):
            run_autointerp(backend, model_id, LLMLabeller(chat), limit=6, concurrency=1)
    assert chat.counts.replies >= CONSTANT_AFTER
    assert backend.query("SELECT count(*) FROM feature_labels")[0][0] == 0


class LabelBlindPredictor(ScriptedChatHandler):
    """Labels in form; predicts from the abstract alone, never reading the label (system prompt)."""

    def reply(self, system: str, user: str) -> str:
        if "MAX_ACTIVATING" in system:
            return f"FINAL: topic {len(user) % 7}"
        return "PREDICTION: " + ("0.8" if "galax" in user.lower() else "-0.6")


def test_labels_no_better_than_shuffled_ones_are_kept_but_not_offered(trained: tuple[Backend, int]) -> None:
    """Issue 33: a run whose control margin was +0.000 exited 0 and its labels stayed on offer."""
    from saedb.interp import OfflineLabeller, corpus_stats

    backend, model_id = trained
    offline = OfflineLabeller(corpus_stats(backend))
    run_autointerp(backend, model_id, offline, limit=4)
    assert label_control(backend, model_id, offline.name, offline).passed()
    with serving(LabelBlindPredictor) as url:
        labeller = LLMLabeller(ChatModel("m", base_url=url, api_key="x"))
        labelled = run_autointerp(backend, model_id, labeller, limit=4, concurrency=1)
        report = label_control(backend, model_id, labeller.name, labeller)
    assert len(labelled) == 4 and report.pearson_margin() == 0 and not report.passed()
    assert "labels are not better than shuffled ones" in report.lines()[-1]
    assert backend.query("SELECT count(*), count(*) FILTER (WHERE clean) FROM feature_labels WHERE labeller = 'llm:m'")[0] == (4, 0)
    offered = {r[0] for r in backend.query("SELECT DISTINCT labeller FROM feature_best_labels WHERE model_id = ?", (model_id,))}
    assert offered == {offline.name}
    from saedb.interp import mark_clean

    assert mark_clean(backend, model_id, labeller.name) == 0  # a later labelling run keeps the verdict


def test_a_malformed_family_name_falls_back_to_the_offline_name() -> None:
    """Issue 33: `families --llm` stopped at its first malformed reply, unlike interp and eval."""
    from saedb.families import Family, llm_family_namer, offline_family_name

    family = Family(root=1, iteration=0, members={1: (None, 0), 2: (1, 1), 3: (1, 1), 4: (1, 1)})
    labels = {1: "galaxy clusters", 2: "cluster lensing", 3: "cluster mergers", 4: "intracluster gas"}
    with serving(Echoing) as url:
        chat = ChatModel("m", base_url=url, api_key="x")
        assert llm_family_namer(LLMLabeller(chat))(family, labels) == offline_family_name(family, labels)
    assert chat.counts.malformed == chat.counts.replies == 3


def test_parsers_refuse_echoes_but_keep_real_answers() -> None:
    from saedb.llm import final_answer, prediction

    instructions = "End your reply with one line: FINAL: <a label of 1 to 8 words>"
    assert final_answer("Reasoning\nFINAL: **Graph neural networks**", instructions=instructions) == "Graph neural networks"
    for reply in ("FINAL: a label of 1 to 8 words", "FINAL:   ", "no final line"):
        with pytest.raises(MalformedReplyError):
            final_answer(reply, instructions=instructions)
    from saedb.llm import label_answer

    assert label_answer("FINAL: graph neural networks, GNNs", instructions) == "graph neural networks, GNNs"
    for reply in ("FINAL: 1.000", "FINAL: A-based Classification Model. This paper proposes a multi-agent"):
        with pytest.raises(MalformedReplyError, match="not a label"):
            label_answer(reply, instructions)  # what the 270M base model wrote (bench/bench_llm.py)
    assert prediction("PREDICTION: 1.7") == 1.0
    with pytest.raises(MalformedReplyError):
        prediction("PREDICTION: <number between -1 and 1>")
    assert np.isclose(prediction("PREDICTION: **-0.25**"), -0.25)


def test_interp_from_the_command_line_prints_and_records_what_the_run_cost(trained: tuple[Backend, int], db_url: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from saedb.backends import connect
    from saedb.cli import app

    backend, model_id = trained
    if backend.dialect == "duckdb":
        backend.close()
    interp = ["interp", str(model_id), "--llm", "m", "--limit", "3", "--db", db_url, "--no-control"]
    with serving(Following) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        result = CliRunner().invoke(app, interp)
        with connect(db_url) as writer:
            writer.execute("DELETE FROM feature_labels")
        again = CliRunner().invoke(app, interp)  # the same 3 features again: all from the cache
    assert result.exit_code == 0 and again.exit_code == 0, result.output + again.output
    assert "0 malformed" in result.output and "(0 answered from the cache)" in result.output
    with connect(db_url, read_only=True) as reader:
        runs = reader.query("SELECT task, model, protocol, replies, requests, cached FROM llm_runs ORDER BY created_at")
        stored = reader.query("SELECT count(*) FROM llm_responses WHERE model = 'm'")[0][0]
    assert len(runs) == 2 and runs[0][:3] == ("interp", "m", "chat") and runs[0][3] == runs[0][4] == stored > 0
    assert runs[1][3:] == (runs[0][3], 0, runs[0][3])  # as many replies, no request, all cached


def test_a_server_that_crashes_at_start_is_one_line_naming_its_signal_and_the_fix(tmp_path) -> None:
    """Issue 33: a native llama.cpp build died of SIGILL (AMX) and saedb said only 'did not start:
    …initializing…'. A real process that dies of that signal stands in for the server here; the
    real server's own tests fail whenever it dies (their fixtures check how it ended)."""
    from saedb.errors import ConfigurationError
    from saedb.localllm import local_llm

    crashing = tmp_path / "llama-server"
    crashing.write_text("#!/bin/sh\necho 'srv llama_server: initializing ...'\nkill -ILL $$\n")
    crashing.chmod(0o755)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(ConfigurationError, match=r"exited before answering \(signal SIGILL: .*rebuild it portably with `make llm`"):
        with local_llm(str(model), binary=crashing, log=tmp_path / "server.log"):
            pass
    exiting = tmp_path / "llama-server-1"
    exiting.write_text("#!/bin/sh\necho 'error: failed to load model'\nexit 1\n")
    exiting.chmod(0o755)
    with pytest.raises(ConfigurationError, match=r"exit status 1\).*failed to load model"):
        with local_llm(str(model), binary=exiting, log=tmp_path / "server.log"):
            pass


def test_interp_prints_its_error_after_the_progress_bar(trained: tuple[Backend, int], db_url: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 35: the `error: …` line was printed inside the bar's line and the bar redrawn after
    it, so the last line a user saw was the bar."""
    from typer.testing import CliRunner

    from saedb.cli import app

    backend, model_id = trained
    if backend.dialect == "duckdb":
        backend.close()
    with serving(Echoing) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        result = CliRunner().invoke(app, ["interp", str(model_id), "--llm", "m", "--limit", "20", "--db", db_url])
    assert result.exit_code != 0
    lines = [line for line in result.output.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: this model does not follow the protocol"), lines[-3:]


# A real server process that answers `limit` requests (each logged once its reply is sent, one at
# a time), then dies on the next without answering, as a crashed llama.cpp server would.
DYING_SERVER = """
import json, os, sys, threading
from http.server import ThreadingHTTPServer
from tests.scripted_chat import ScriptedChatHandler
log, limit = sys.argv[1], int(sys.argv[2])
lock, answered = threading.Lock(), [0]

class Dying(ScriptedChatHandler):
    def reply(self, system, user):
        self.asked = json.dumps([system, user])
        if "MAX_ACTIVATING" in system:
            return f"The abstracts share one topic.\\nFINAL: topic {len(user) % 7}"
        return "Reasoning.\\nPREDICTION: " + ("0.8" if "star" in user.lower() else "-0.6")

    def do_POST(self):
        with lock:
            if limit and answered[0] >= limit:
                os._exit(1)
            super().do_POST()
            self.wfile.flush()
            answered[0] += 1
            with open(log, "a") as file:
                file.write(self.asked + "\\n")

server = ThreadingHTTPServer(("127.0.0.1", 0), Dying)
print(server.server_port, flush=True)
server.serve_forever()
"""


def test_an_llm_server_that_dies_mid_run_stops_it_in_one_line_and_the_rerun_asks_nothing_again(
        trained: tuple[Backend, int], db_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 35: after 12 replies the server is gone. The run stops with one line naming the
    endpoint; every reply it got is kept (all well-formed here), so a rerun against a new server
    asks none of those prompts again, and it finishes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from typer.testing import CliRunner

    from saedb.backends import connect
    from saedb.cli import app

    backend, model_id = trained
    if backend.dialect == "duckdb":
        backend.close()
    with connect(db_url) as writer:
        writer.execute("DELETE FROM feature_labels")
        writer.execute("DELETE FROM llm_responses WHERE model = 'dying'")
    root = Path(__file__).resolve().parent.parent

    def server(log: Path, limit: int) -> tuple[subprocess.Popen, str]:
        process = subprocess.Popen([sys.executable, "-c", DYING_SERVER, str(log), str(limit)], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(root)})
        return process, f"http://127.0.0.1:{process.stdout.readline().strip()}/v1"

    interp = ["interp", str(model_id), "--llm", "dying", "--limit", "4", "--db", db_url, "--no-control", "--no-untrained",
              "--no-families"]
    first, url = server(tmp_path / "first.log", 12)
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        stopped = CliRunner().invoke(app, interp)
        assert first.wait(timeout=60) == 1  # it died
    finally:
        first.kill()
    lines = [line for line in stopped.output.replace("\r", "\n").splitlines() if line.strip()]
    assert stopped.exit_code == 2 and lines[-1].startswith("error: cannot reach the endpoint at " + url), lines[-3:]
    assert "Traceback" not in stopped.output
    answered = set((tmp_path / "first.log").read_text().splitlines())
    assert len(answered) == 12
    second, url = server(tmp_path / "second.log", 0)
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        again = CliRunner().invoke(app, interp)
    finally:
        second.kill()
    assert again.exit_code == 0, again.output
    asked_again = set((tmp_path / "second.log").read_text().splitlines()) & answered
    assert not asked_again, f"{len(asked_again)} prompts asked twice"
    with connect(db_url, read_only=True) as reader:
        assert reader.query("SELECT count(*) FROM feature_labels WHERE labeller LIKE '%dying%'")[0][0] == 4


def test_a_slow_endpoint_is_told_apart_from_an_unreachable_one() -> None:
    """Issue 51: an endpoint that answered slowly was reported as "cannot reach the endpoint"."""
    import socket

    from saedb.openai_api import LLMUnavailableError, endpoint_errors, openai_client

    with socket.socket() as silent:  # listens (the kernel completes the connection) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        client = openai_client(url, timeout_s=0.2, max_retries=0)
        with pytest.raises(LLMUnavailableError, match=r"did not answer within .* reachable but slow"):
            with endpoint_errors(client, "m"):
                client.models.list()
    client = openai_client(url, timeout_s=0.2, max_retries=0)  # closed now: nobody listens there
    with pytest.raises(LLMUnavailableError, match="cannot reach the endpoint"):
        with endpoint_errors(client, "m"):
            client.models.list()
