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


def start_saedb_postgres(data: Path) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-m", "saedb.cli", "postgres", "--data", str(data)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = child.stdout.readline()
    assert "PostgreSQL is up" in line, line
    return child, line.split("--db '", 1)[1].split("'", 1)[0]


def test_logins_other_than_the_owners_own_need_their_password(tmp_path: Path) -> None:
    """Issue 54: pg_hba.conf was `local all all trust`: a wrong password was a superuser login,
    and a reader's password was never checked. Now only the OS user who runs saedb logs in as
    postgres without one (peer); every other login gives its password (SCRAM-SHA-256)."""
    os.chmod(tmp_path, 0o755)
    child, dsn = start_saedb_postgres(tmp_path / "pg")
    try:
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("CREATE ROLE dash LOGIN PASSWORD 'right'")
        as_dash = psycopg.conninfo.make_conninfo(dsn.replace("postgresql://postgres:@", "postgresql://dash@"))
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(psycopg.conninfo.make_conninfo(as_dash, password="wrong")).close()
        with psycopg.connect(psycopg.conninfo.make_conninfo(as_dash, password="right")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("dash",)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT rule_number, auth_method FROM pg_hba_file_rules ORDER BY rule_number").fetchall() == [
                (1, "peer"), (2, "scram-sha-256")]
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 0


def test_a_killed_saedb_postgres_leaves_no_server_the_next_one_cannot_stop_and_a_dead_server_is_reported(tmp_path: Path) -> None:
    """Issue 54: kill -9 of `saedb postgres` left its pid in .handle_pids.json, so the next one
    on the same data directory said 'stopping PostgreSQL' and left the server running; and when
    the postmaster died, saedb postgres stayed up saying nothing."""
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "pg"
    first, _ = start_saedb_postgres(data)
    first.kill()
    first.wait(timeout=60)
    second, dsn = start_saedb_postgres(data)  # the server the killed one left, taken over
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    assert not (data / "postmaster.pid").exists(), "the server is still running"  # pg_ctl -w stop removed it before exiting
    third, dsn = start_saedb_postgres(data)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    output, _ = third.communicate(timeout=60)
    assert third.returncode == 2 and "stopped on its own" in output, output
