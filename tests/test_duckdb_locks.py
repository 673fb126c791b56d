"""DuckDB files shared by processes: a training run holds the file only to read embeddings
and to write back, so a running `saedb serve` (a read-only process) and read-only CLI
commands do not lock it out for the whole training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from saedb.cli import app


runner = CliRunner()
ROOT_DIR = Path(__file__).resolve().parent.parent
HOLD_READ_ONLY = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); time.sleep(float(sys.argv[2]))"


def hold(path: str, seconds: float) -> subprocess.Popen:
    """Another process (as `saedb serve` does) holding the file read-only for a while."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_READ_ONLY, path, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "open"
    return child


def test_train_waits_for_readers_only_at_write_back_and_read_commands_share_the_file(tmp_path: Path, astro_slice: Path) -> None:
    db = str(tmp_path / "shared.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db]).exit_code == 0
    reader = hold(db, 6)
    try:
        assert runner.invoke(app, ["models", "--db", db]).exit_code == 0  # read-only beside a read-only process
        assert runner.invoke(app, ["sql", "SELECT count(*) FROM papers", "--db", db]).output.strip() == "400"
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
        trained = subprocess.run([sys.executable, "-m", "saedb.cli", "train", "--db", db, "--k", "4", "--n", "32", "--steps", "20",
                                  "--batch-size", "64"], capture_output=True, text=True, env=env, timeout=120)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "waiting" in trained.stdout and "published model 1" in trained.stdout
        assert reader.poll() is not None and time.monotonic() - started >= 1  # it waited for the reader to go
    finally:
        reader.kill()


HOLD_WRITABLE = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('open', flush=True); time.sleep(float(sys.argv[2]))"


def test_streamed_training_waits_for_a_writer_to_read_its_chunks(tmp_path: Path, astro_slice: Path) -> None:
    """Another process writing (e.g. `saedb load` adding papers) holds the file exclusively;
    a training run streaming chunks waits for it instead of failing part-way."""
    db = str(tmp_path / "busy.duckdb")
    assert runner.invoke(app, ["load", str(astro_slice), "--db", db]).exit_code == 0
    writer = subprocess.Popen([sys.executable, "-c", HOLD_WRITABLE, db, "4"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
        trained = subprocess.run([sys.executable, "-m", "saedb.cli", "train", "--db", db, "--k", "4", "--n", "32", "--steps", "20",
                                  "--batch-size", "64", "--chunk-rows", "100"], capture_output=True, text=True, env=env, timeout=120)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        assert "waiting" in trained.stdout and "published model 1" in trained.stdout
        assert writer.poll() is not None
    finally:
        writer.kill()
