"""Database backends: one interface (``Backend``), DuckDB and PostgreSQL implementations."""

from __future__ import annotations

import duckdb
import psycopg

from saedb.backends.base import Backend, DocumentBatch

DEFAULT_DB = "saedb.duckdb"
# Errors the databases raise for bad queries or bad input inside SQL functions.
DATABASE_ERRORS: tuple[type[Exception], ...] = (duckdb.Error, psycopg.Error)


def connect(url: str = DEFAULT_DB) -> Backend:
    """Open a backend from a URL: ``postgresql://...`` for Postgres, otherwise a DuckDB
    file path (``duckdb:///path`` or a plain path; ``:memory:`` for an in-memory DB)."""
    if url.startswith(("postgresql://", "postgres://")):
        from saedb.backends.postgres import PostgresBackend

        return PostgresBackend(url)
    from saedb.backends.duckdb import DuckDBBackend

    return DuckDBBackend(url.removeprefix("duckdb://"))


__all__ = ["Backend", "DocumentBatch", "connect", "DEFAULT_DB", "DATABASE_ERRORS"]
