"""Hand a DuckDB file from a read-only server to a writer and back.

DuckDB lets a process write a file only while no other process has it open, so a running
`saedb serve` kept `saedb train` from publishing. A writer leaves a request beside the file
(``<file>.write-request-<pid>-<token>``) while it waits for and holds the file; a server watching for
requests lets go of the file between requests (answering 503 with Retry-After meanwhile) and
opens it again once no live writer asks any more.

A request is proven by a lock, not by its pid (a pid is reused): the writer takes an exclusive
``flock`` on the file before it gets its request name and keeps it until the file is removed;
the kernel drops the lock when the writer dies, however it dies. A request file nobody holds
(a writer killed with -9) is ignored.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from saedb.backends.urls import is_postgres_url, split_schema


def duckdb_file(url: str) -> Path | None:
    """The file behind a DuckDB URL (None for Postgres and in-memory databases)."""
    if is_postgres_url(url):
        return None
    path = split_schema(url.removeprefix("duckdb://"))[0]
    return None if path == ":memory:" else Path(path).resolve()


def _held(request: Path) -> bool:
    """Whether a live writer holds ``request``'s lock."""
    try:
        descriptor = os.open(request, os.O_RDONLY)
    except FileNotFoundError:  # its writer has just finished
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # and with it the shared lock, if taken
    return False


def write_requested(path: Path) -> bool:
    """Whether a live process asks to write ``path``."""
    return any(_held(request) for request in path.parent.glob(f"{path.name}.write-request-*"))


@contextmanager
def requesting_write(url: str) -> Iterator[None]:
    """Ask servers of a DuckDB file to let go of it for the duration of the block."""
    path = duckdb_file(url)
    if path is None:
        yield
        return
    request = path.with_name(f"{path.name}.write-request-{os.getpid()}-{secrets.token_hex(4)}")  # the pid tells people who asks
    pending = path.with_name(f".{request.name}.pending")  # locked before it has the name servers look for
    descriptor = os.open(pending, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.replace(pending, request)
        try:
            yield
        finally:
            request.unlink(missing_ok=True)
    finally:
        os.close(descriptor)
        pending.unlink(missing_ok=True)
