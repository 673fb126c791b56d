"""DuckDB files shared by processes: a training run holds the file only to read embeddings
and to write back, so a running `saedb serve` (a read-only process) and read-only CLI
commands do not lock it out for the whole training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from typer.testing import CliRunner

from saedb.cli import app


runner = CliRunner()
ROOT_DIR = Path(__file__).resolve().parent.parent
# Another process holding the file, read-only (as `saedb serve` does) or writable (as `saedb
# load` does), until the test tells it to let go: the test releases it only once the trainer
# has said it is waiting, so the outcome never depends on which process is faster.
HOLD = ("import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'read-only'); "
        "print('open', flush=True); sys.stdin.readline(); c.close()")


ENV = {**os.environ, "PYTHONPATH": str(ROOT_DIR), "PYTHONUNBUFFERED": "1"}


@contextmanager
def served_after_one_model(db: str, astro_slice: Path) -> Iterator[str]:
    """`saedb serve` (its own process) over ``db`` loaded and with one model trained; its base URL."""
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db]).exit_code == 0
    assert runner.invoke(app, ["train", "--db", db, "--k", "4", "--n", "32", "--steps", "20", "--batch-size", "64"]).exit_code == 0
    server = subprocess.Popen([sys.executable, "-m", "saedb.cli", "serve", "--db", db, "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        yield re.search(r"(http://127\.0\.0\.1:\d+)/", server.stdout.readline()).group(1)
    finally:
        server.kill()
        server.wait()


def served_models(base: str) -> list[int] | None:
    """The model ids the server lists; None while it answers 503 (it has let go of the file)."""
    try:
        with urllib.request.urlopen(f"{base}/api/models", timeout=30) as response:
            return [m["model_id"] for m in json.loads(response.read())]
    except urllib.error.HTTPError as err:
        assert err.code == 503 and err.headers.get("Retry-After") == "1"
        return None


def hold(path: str, mode: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD, path, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "open"
    return child


def train_until_it_waits(db: str, holder: subprocess.Popen, *options: str) -> str:
    """Run `saedb train` in its own process; release ``holder`` when the trainer reports that it
    waits for the file; return the trainer's whole output (which must show the wait)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR), "PYTHONUNBUFFERED": "1"}
    trainer = subprocess.Popen([sys.executable, "-m", "saedb.cli", "train", "--db", db, "--k", "4", "--n", "32", "--steps", "20",
                                "--batch-size", "64", *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in trainer.stdout:
            lines.append(line)
            if "waiting" in line:
                holder.stdin.write("release\n")
                holder.stdin.flush()
                assert holder.wait(timeout=120) == 0
        assert trainer.wait(timeout=300) == 0, "".join(lines)
    finally:
        trainer.kill()
    return "".join(lines)


def test_train_waits_for_readers_only_at_write_back_and_read_commands_share_the_file(tmp_path: Path, astro_slice: Path) -> None:
    db = str(tmp_path / "shared.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db]).exit_code == 0
    reader = hold(db, "read-only")
    try:
        assert runner.invoke(app, ["models", "--db", db]).exit_code == 0  # read-only beside a read-only process
        assert runner.invoke(app, ["sql", "SELECT count(*) AS n FROM papers", "--db", db]).output.strip() == "n\n400"
        output = train_until_it_waits(db, reader)
        # it trained beside the reader and waited only to write back
        assert output.index("step 20/20") < output.index("waiting") < output.index("published model 1"), output
    finally:
        reader.kill()


def test_streamed_training_waits_for_a_writer_to_read_its_chunks(tmp_path: Path, astro_slice: Path) -> None:
    """Another process writing (e.g. `saedb load` adding papers) holds the file exclusively;
    a training run streaming chunks waits for it instead of failing part-way."""
    db = str(tmp_path / "busy.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db]).exit_code == 0
    writer = hold(db, "writable")
    try:
        output = train_until_it_waits(db, writer, "--chunk-rows", "100")
        assert "waiting" in output and "published model 1" in output, output
    finally:
        writer.kill()


def test_train_publishes_while_saedb_serve_is_up(tmp_path: Path, astro_slice: Path) -> None:
    """`saedb train` waited 600 s for a running `saedb serve` and saved its model aside: the
    server now lets go of the file while the trainer writes back and serves the new model after."""
    db = str(tmp_path / "served.duckdb")
    with served_after_one_model(db, astro_slice) as base:
        assert served_models(base) == [1]
        trained = subprocess.run([sys.executable, "-m", "saedb.cli", "train", "--db", db, "--k", "4", "--n", "32", "--steps", "20",
                                  "--batch-size", "64"], capture_output=True, text=True, env=ENV, timeout=300)
        assert trained.returncode == 0 and "published model 2" in trained.stdout, trained.stdout + trained.stderr
        answers = []
        for _ in range(600):  # the server opens the file again: wait for that condition, not for a time
            answers.append(served_models(base))
            if answers[-1] and 2 in answers[-1]:
                break
        assert sorted(answers[-1] or []) == [1, 2], answers[-5:]


def test_a_file_held_read_only_by_plain_duckdb_opens_read_only_in_saedb_and_says_why_not_writable(tmp_path: Path) -> None:
    """Issue 33: `duckdb.connect(path, read_only=True)` then `saedb.connect(path)` failed with
    DuckDB's 'different configuration than existing connections' and no way out."""
    import duckdb
    import pytest

    import saedb
    from saedb.errors import ConfigurationError

    path = str(tmp_path / "held.duckdb")
    saedb.connect(path, create=True).close()  # a saedb file with its schema
    held = duckdb.connect(path, read_only=True)
    try:
        with pytest.raises(ConfigurationError, match=r"open it as the other connection does \(saedb.connect\(path, read_only=True\)"):
            saedb.connect(path)
        reader = saedb.connect(path, read_only=True)
        assert reader.sql("SELECT count(*) AS n FROM papers").to_pylist() == [{"n": held.execute("SELECT count(*) FROM papers").fetchone()[0]}]
        reader.close()
    finally:
        held.close()


def test_a_write_request_counts_only_while_its_writer_holds_it(tmp_path: Path) -> None:
    """Issue 35: a leftover `<file>.write-request-<pid>` whose pid now belongs to an unrelated
    live process made `saedb serve` answer 503 for as long as that process lived. A request is
    a lock its writer holds, not a pid."""
    from saedb.backends.handoff import requesting_write, write_requested

    path = tmp_path / "handed.duckdb"
    path.touch()
    unrelated = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        path.with_name(f"{path.name}.write-request-{unrelated.pid}").touch()  # a trainer killed long ago; its pid reused
        path.with_name(f"{path.name}.write-request-{os.getpid()}").touch()  # even this live process's own pid
        assert not write_requested(path)
        with requesting_write(str(path)):
            assert write_requested(path)
        assert not write_requested(path)
    finally:
        unrelated.kill()
        unrelated.wait()


# A trainer's write-back, stopped in the middle: the first batch of codes written inside the
# publishing transaction, then it says so and waits (to be killed).
HALF_PUBLISH = """
import sys
import numpy as np
from saedb.backends.duckdb import DuckDBBackend
from saedb.backends.handoff import requesting_write
from saedb.models import publish_model
from saedb.sae import SAE
from saedb.trainer.train import connect_when_free

db = sys.argv[1]
write_codes = DuckDBBackend.copy_codes

def copy_then_stop(self, *args):
    write_codes(self, *args)
    print("mid-write", flush=True)
    sys.stdin.readline()

DuckDBBackend.copy_codes = copy_then_stop
with requesting_write(db), connect_when_free(db, 300, 0.05, print) as writer:
    publish_model(writer, SAE.random(writer.require_embedder()[1], 32, 4, seed=3), "half")
"""


def test_a_trainer_killed_while_serve_has_let_go_leaves_no_half_model_and_serve_answers_again(tmp_path: Path, astro_slice: Path) -> None:
    """Issue 35: kill -9 a writer exactly while `saedb serve` has let go of the file (the writer
    holds it, mid-way through publishing): serve opens the file again and answers, and the
    database has the models it had, no part of the new one."""
    import signal

    from saedb.backends import connect

    db = str(tmp_path / "killed.duckdb")
    with served_after_one_model(db, astro_slice) as base:
        assert served_models(base) == [1]
        writer = subprocess.Popen([sys.executable, "-c", HALF_PUBLISH, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
        try:
            said = []
            for line in writer.stdout:  # it may first say that it waits for serve to let go
                said.append(line)
                if line.strip() == "mid-write":
                    break
            assert said and said[-1].strip() == "mid-write", said
            assert served_models(base) is None  # the writer holds the file: serve has let go of it
            writer.send_signal(signal.SIGKILL)
            assert writer.wait(timeout=60) == -signal.SIGKILL
        finally:
            writer.kill()
        answers = []
        for _ in range(600):  # serve opens the file again: wait for that condition, not for a time
            answers.append(served_models(base))
            if answers[-1] is not None:
                break
        assert answers[-1] == [1], answers[-5:]
    with connect(db, read_only=True) as backend:
        assert backend.query("SELECT count(*) FROM sae_models")[0][0] == 1
        for table in ("sae_codes", "sae_encoder", "sae_decoder", "model_holdout"):
            assert backend.query(f"SELECT count(*) FROM {table} WHERE model_id <> 1")[0][0] == 0, table
