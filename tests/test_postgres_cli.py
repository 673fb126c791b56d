"""`saedb postgres` stops its server cleanly on SIGTERM, SIGINT (also when started in the
background, where SIGINT is ignored by default) and SIGHUP: no orphaned postmaster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_stop_the_server(signum: signal.Signals, tmp_path: Path) -> None:
    data = tmp_path / "pg"
    os.chmod(tmp_path, 0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # As a shell's `cmd &` starts it: SIGINT ignored on entry.
    child = subprocess.Popen([sys.executable, "-m", "saedb.cli", "postgres", "--data", str(data)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    line = child.stdout.readline()
    assert "PostgreSQL is up" in line, line
    dsn = line.split("--db '", 1)[1].split("'", 1)[0]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    child.send_signal(signum)
    assert child.wait(timeout=60) == 0
    deadline = time.time() + 20
    while time.time() < deadline and any(data.rglob("postmaster.pid")):
        time.sleep(0.2)
    assert not any(data.rglob("postmaster.pid")), "the postmaster is still running"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=3)
