"""DuckDB files shared by processes: a training run holds the file only to read embeddings
and to write back, so a running `saedb serve` (a read-only process) and read-only CLI
commands do not lock it out for the whole training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from saedb.cli import app


runner = CliRunner()
ROOT_DIR = Path(__file__).resolve().parent.parent
# Another process holding the file, read-only (as `saedb serve` does) or writable (as `saedb
# load` does), until the test tells it to let go: the test releases it only once the trainer
# has said it is waiting, so the outcome never depends on which process is faster.
HOLD = ("import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'read-only'); "
        "print('open', flush=True); sys.stdin.readline(); c.close()")


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
        assert runner.invoke(app, ["sql", "SELECT count(*) FROM papers", "--db", db]).output.strip() == "400"
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
    import json
    import re
    import urllib.error
    import urllib.request

    db = str(tmp_path / "served.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db]).exit_code == 0
    assert runner.invoke(app, ["train", "--db", db, "--k", "4", "--n", "32", "--steps", "20", "--batch-size", "64"]).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "saedb.cli", "serve", "--db", db, "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env)
    try:
        banner = server.stdout.readline()
        base = re.search(r"(http://127\.0\.0\.1:\d+)/", banner).group(1)

        def models() -> list[int] | None:
            try:
                with urllib.request.urlopen(f"{base}/api/models", timeout=30) as response:
                    return [m["model_id"] for m in json.loads(response.read())]
            except urllib.error.HTTPError as err:
                assert err.code == 503 and err.headers.get("Retry-After") == "1"  # while the trainer writes
                return None

        assert models() == [1]
        trained = subprocess.run([sys.executable, "-m", "saedb.cli", "train", "--db", db, "--k", "4", "--n", "32", "--steps", "20",
                                  "--batch-size", "64"], capture_output=True, text=True, env=env, timeout=300)
        assert trained.returncode == 0 and "published model 2" in trained.stdout, trained.stdout + trained.stderr
        answers = []
        for _ in range(600):  # the server opens the file again: wait for that condition, not for a time
            answers.append(models())
            if answers[-1] and 2 in answers[-1]:
                break
        assert sorted(answers[-1] or []) == [1, 2], answers[-5:]
    finally:
        server.kill()
        server.wait()


def test_a_file_held_read_only_by_plain_duckdb_opens_read_only_in_saedb_and_says_why_not_writable(tmp_path: Path) -> None:
    """Issue 33: `duckdb.connect(path, read_only=True)` then `saedb.connect(path)` failed with
    DuckDB's 'different configuration than existing connections' and no way out."""
    import duckdb
    import pytest

    import saedb
    from saedb.errors import ConfigurationError

    path = str(tmp_path / "held.duckdb")
    saedb.connect(path).close()  # a saedb file with its schema
    held = duckdb.connect(path, read_only=True)
    try:
        with pytest.raises(ConfigurationError, match=r"open it as the other connection does \(saedb.connect\(path, read_only=True\)"):
            saedb.connect(path)
        reader = saedb.connect(path, read_only=True)
        assert reader.sql("SELECT count(*) AS n FROM papers").to_pylist() == [{"n": held.execute("SELECT count(*) FROM papers").fetchone()[0]}]
        reader.close()
    finally:
        held.close()
