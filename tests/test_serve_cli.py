"""`saedb serve` as a user starts it: the DSN it prints never shows the password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from saedb.backends import connect, mask_dsn
from saedb.loaders import load_corpus

ROOT = Path(__file__).resolve().parent.parent


def test_mask_dsn_hides_passwords_only() -> None:
    assert mask_dsn("postgresql://saedb:s3cret@db:5432/x") == "postgresql://saedb:***@db:5432/x"
    assert mask_dsn("postgresql://u@/x?host=/tmp&password=s3cret&sslmode=off") == "postgresql://u@/x?host=/tmp&password=***&sslmode=off"
    assert mask_dsn("saedb.duckdb") == "saedb.duckdb"
    # an empty user name, and '@' or '/' left unencoded in the password, leaked it
    assert mask_dsn("postgresql://:s3cret@db/x") == "postgresql://:***@db/x"
    assert mask_dsn("postgresql://saedb:p@ss/w0rd@db:5432/x") == "postgresql://saedb:***@db:5432/x"
    assert mask_dsn("postgres://saedb:a/b?c@db/x?sslmode=off") == "postgres://saedb:***@db/x?sslmode=off"
    assert mask_dsn("host=db user=saedb password=s3cret dbname=x") == "host=db user=saedb password=*** dbname=x"
    assert mask_dsn("host=db password='s3 cret' dbname=x") == "host=db password=*** dbname=x"
    for url in ("postgresql://:s3cret@db/x", "postgresql://saedb:p@ss/w0rd@db:5432/x", "postgresql://u@/x?password=s3cret"):
        assert "s3cret" not in mask_dsn(url) and "w0rd" not in mask_dsn(url)


def test_serve_prints_the_dsn_without_its_password(pg_dsn: str, astro_slice: Path, embedder) -> None:
    with connect(pg_dsn) as backend:
        load_corpus(backend, astro_slice, embedder, limit=20, progress=False)
    user, rest = pg_dsn.split("://", 1)[1].split("@", 1)
    dsn = f"postgresql://{user.split(':')[0]}:s3cret-pw@{rest}"  # local trust auth ignores the password
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "saedb.cli", "serve", "--db", dsn, "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = server.stdout.readline()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert "saedb is serving" in line and "s3cret-pw" not in line and ":***@" in line


def serving(db: str, *options: str) -> tuple[subprocess.Popen, int]:
    """`saedb serve` on a free port, once it prints its address."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "saedb.cli", "serve", "--db", db, "--port", "0", *options],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = server.stdout.readline()
    assert "saedb is serving" in line, line + server.stdout.read()
    return server, int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])


def test_serve_takes_its_connection_cap_and_idle_timeout_as_options(tmp_path: Path, astro_slice: Path, embedder) -> None:
    """Issue 35: both were hard-coded (512, 30 s). With --max-connections 1 a second connection is
    closed at once while the first is served; with --idle-timeout 1 a silent connection is closed
    long before the default's 30 s (the wait is bounded at 20 s)."""
    import socket

    db = str(tmp_path / "serve.duckdb")
    with connect(db) as backend:
        load_corpus(backend, astro_slice, embedder, limit=20, progress=False)
    server, port = serving(db, "--max-connections", "1", "--idle-timeout", "600")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as first, \
                socket.create_connection(("127.0.0.1", port), timeout=60) as second:
            assert second.recv(1) == b""  # closed by the server: the cap is 1
            first.sendall(b"GET /api/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert first.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        server.terminate()
        server.wait(timeout=20)
    server, port = serving(db, "--idle-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as silent:
            assert silent.recv(1) == b""  # closed for idling; socket.timeout after 20 s if the option were ignored
    finally:
        server.terminate()
        server.wait(timeout=20)
