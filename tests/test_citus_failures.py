"""A Citus node lost (issue 35): a worker or the coordinator killed with SIGKILL, it and every
process it started, as a machine that loses power. A search or a load that needs it stops with
an error naming the node; after `LocalCluster.start()` brings it back on the same data, searches
answer as before and the load, run again, leaves every paper exactly once.

Its own cluster (not test_citus.py's), since nodes die here."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from saedb.backends import connect, user_message
from saedb.backends.citus import CitusBackend
from saedb.cli import app
from saedb.cluster import LocalCluster, Node
from saedb.loaders import load_corpus
from saedb.search import search
from tests.conftest import ML, write_slice

PAPERS = 600


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="saedb-citus-lost-") as directory:
        os.chmod(directory, 0o755)  # the servers run as another user
        cluster = LocalCluster(Path(directory), workers=2)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slice(ML, tmp_path_factory.mktemp("lost") / "ml.jsonl.gz", PAPERS)


def power_off(node: Node) -> None:
    """SIGKILL the node's postmaster and every process it started; return once all are gone."""
    postmaster = int((node.data / "postmaster.pid").read_text().split()[0])
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()]
    for pid in [postmaster, *children]:
        os.kill(pid, signal.SIGKILL)
    for pid in [postmaster, *children]:  # the condition, not a time: each process has ended
        while os.path.exists(f"/proc/{pid}") and "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace").lower():
            threading.Event().wait(0.05)


def counts(url: str) -> tuple[int, int, int, int]:
    """(papers, distinct arXiv ids, embeddings, paper keys)."""
    with connect(url, read_only=True) as backend:
        return backend.query("SELECT (SELECT count(*) FROM papers), (SELECT count(DISTINCT arxiv_id) FROM papers), "
                             "(SELECT count(*) FROM embeddings), (SELECT count(*) FROM paper_keys)")[0]


def load_losing(cluster: LocalCluster, node: Node, corpus: Path, embedder, monkeypatch: pytest.MonkeyPatch) -> Exception:  # noqa: ANN001
    """Load ``corpus`` in batches of 100; once the first batch is committed, power ``node`` off
    and let the load go on to the second. The error the load ended with."""
    committed, resume, ended = threading.Event(), threading.Event(), []
    insert, calls = CitusBackend.insert_documents, []

    def insert_then_wait(self: CitusBackend, batch) -> int:  # noqa: ANN001
        calls.append(len(batch))
        if len(calls) == 2:  # the first batch's transaction has committed
            committed.set()
            resume.wait()
        return insert(self, batch)

    monkeypatch.setattr(CitusBackend, "insert_documents", insert_then_wait)

    def run() -> None:
        try:
            with connect(cluster.url()) as backend:
                load_corpus(backend, corpus, embedder, batch_size=100, progress=False)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            ended.append(exc)

    loader = threading.Thread(target=run)
    loader.start()
    committed.wait()
    power_off(node)
    resume.set()
    loader.join()
    monkeypatch.undo()
    assert ended, "the load went on without the node"
    return ended[0]


@pytest.mark.parametrize("lost", ["worker1", "coordinator"])
def test_a_node_lost_during_a_load_is_named_and_a_rerun_after_restart_loads_each_paper_once(
        cluster: LocalCluster, corpus: Path, embedder, lost: str, monkeypatch: pytest.MonkeyPatch) -> None:
    node = next(n for n in cluster.nodes if n.name == lost)
    with connect(cluster.url()) as backend:
        if backend.embedder() is not None:  # what the test before loaded
            for table in ("embeddings", "papers", "paper_keys"):
                backend.execute(f"DELETE FROM {table}")
    error = load_losing(cluster, node, corpus, embedder, monkeypatch)
    said = user_message(error).replace('"127.0.0.1", port ', "127.0.0.1:")  # psycopg's way, or Citus's and saedb's
    assert f"127.0.0.1:{node.port}" in said, said
    cluster.start()
    papers, distinct, embeddings, keys = counts(cluster.url())
    assert papers == distinct == embeddings == keys == 100  # the batch committed before the loss, no part of the next
    with connect(cluster.url()) as backend:
        load_corpus(backend, corpus, embedder, batch_size=100, progress=False)
    assert counts(cluster.url()) == (PAPERS,) * 4


def test_a_worker_lost_before_a_search_is_one_line_naming_it_and_searches_answer_again_after_restart(
        cluster: LocalCluster, corpus: Path, embedder) -> None:
    with connect(cluster.url()) as backend:
        load_corpus(backend, corpus, embedder, progress=False)
        query = embedder.embed(["neural networks for images"])[0]
        before = [hit.doc_id for hit in search(backend, query, 10)]
    worker = cluster.nodes[1]
    power_off(worker)
    result = CliRunner().invoke(app, ["search", "neural networks for images", "--db", cluster.url()])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(worker.port) in lines[0], result.output
    cluster.start()
    with connect(cluster.url()) as backend:
        assert [hit.doc_id for hit in search(backend, query, 10)] == before
