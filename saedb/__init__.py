"""saedb: sparse-autoencoder features for text embeddings, inside DuckDB and PostgreSQL + pgvector.

``saedb.connect(url)`` opens a database for notebooks (Arrow results); the ``saedb`` command
line drives loading, training, labelling, families, search and evaluation.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("saedb")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from saedb.client import Database, connect


def __getattr__(name: str) -> Any:
    """``connect`` and ``Database`` load the database drivers on first use, so that the trainer
    can run where only torch and numpy are installed."""
    if name in ("connect", "Database"):
        from saedb import client

        return getattr(client, name)
    raise AttributeError(f"module 'saedb' has no attribute {name!r}")


__all__ = ["Database", "__version__", "connect"]
