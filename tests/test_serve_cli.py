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
