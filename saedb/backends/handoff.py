"""Hand a DuckDB file from a read-only server to a writer and back.

DuckDB lets a process write a file only while no other process has it open, so a running
`saedb serve` kept `saedb train` from publishing. A writer leaves a request beside the file
(``<file>.write-request-<pid>``) while it waits for and holds the file; a server watching for
requests lets go of the file between requests (answering 503 with Retry-After meanwhile) and
opens it again once no live writer asks any more. A request whose process has died is ignored.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def duckdb_file(url: str) -> Path | None:
    """The file behind a DuckDB URL (None for Postgres and in-memory databases)."""
    from saedb.backends import split_schema

    if url.startswith(("postgresql://", "postgres://")):
        return None
    path = split_schema(url.removeprefix("duckdb://"))[0]
    return None if path == ":memory:" else Path(path).resolve()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_requested(path: Path) -> bool:
    """Whether a live process asks to write ``path``."""
    for request in path.parent.glob(f"{path.name}.write-request-*"):
        pid = request.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _alive(int(pid)):
            return True
    return False


@contextmanager
def requesting_write(url: str) -> Iterator[None]:
    """Ask servers of a DuckDB file to let go of it for the duration of the block."""
    path = duckdb_file(url)
    if path is None:
        yield
        return
    request = path.with_name(f"{path.name}.write-request-{os.getpid()}")
    request.touch()  # the pid in its name says who asks
    try:
        yield
    finally:
        request.unlink(missing_ok=True)
