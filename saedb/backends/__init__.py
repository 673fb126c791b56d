"""Database backends: one interface (``Backend``), DuckDB and PostgreSQL implementations."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import psycopg
from duckdb import Error as DuckDBError  # by its own name: this package binds its submodule duckdb

from saedb.backends.base import Backend, DocumentBatch
from saedb.backends.duckdb import DuckDBBackend
from saedb.backends.urls import IDENTIFIER, is_postgres_url, mask_dsn, postgres_dsn, split_schema
from saedb.errors import InvalidInputError

DEFAULT_DB = "saedb.duckdb"
# Errors the databases raise for bad queries or bad input inside SQL functions.
DATABASE_ERRORS: tuple[type[Exception], ...] = (DuckDBError, psycopg.Error)


def postgres_class(dsn: str) -> type[Backend]:
    """CitusBackend where the database has the citus extension, else PostgresBackend: chosen
    here only, so the Postgres backend does not know Citus (which overrides what differs)."""
    from saedb.backends.citus import CitusBackend
    from saedb.backends.postgres import PostgresBackend

    with psycopg.connect(dsn, autocommit=True) as conn:
        citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    return CitusBackend if citus else PostgresBackend


def connect(url: str = DEFAULT_DB, read_only: bool = False, statement_timeout_s: float = 10.0, create: bool = True) -> Backend:
    """Open a backend from a URL: ``postgresql://...`` for Postgres (with Citus where the
    database has the citus extension), otherwise a DuckDB
    file path (``duckdb:///path`` or a plain path; ``:memory:`` for an in-memory DB). A
    ``?schema=NAME`` parameter opens the workspace of a table attached with ``saedb attach``.

    ``read_only`` opens an existing saedb database without migrating it, and refuses writes
    (DuckDB opens the file read-only; Postgres sessions are read-only transactions with
    ``statement_timeout_s``; DuckDB has no statement timeout: callers interrupt instead).
    ``create=False``: a DuckDB file that does not exist is an error (a misspelt path), not a new database."""
    if is_postgres_url(url):
        dsn = postgres_dsn(url)
        return postgres_class(dsn)(dsn, read_only=read_only, statement_timeout_ms=int(statement_timeout_s * 1000))
    path, schema = split_schema(url.removeprefix("duckdb://"))
    if (read_only or not create) and path != ":memory:" and not Path(path).exists():
        raise InvalidInputError(f"no database at {path}: `saedb load` creates one (is the path right?)")
    return DuckDBBackend(path, read_only=read_only, schema=schema)


_UDF_WRAPPER = "Python exception occurred while executing the UDF: "
_RAISED_IN_SQL = "Invalid Input Error: "  # DuckDB's prefix to an error() of saedb's SQL (sae_codes' check)


def user_message(exc: Exception) -> str:
    """A database error as the user should read it: first line, DuckDB's UDF wrapper and error class removed, a
    full disk named as such (DuckDB has no error class for it, only the OS's text)."""
    message = str(exc).split("\n")[0]
    if _UDF_WRAPPER in message:
        message = message.split(_UDF_WRAPPER, 1)[1].split(": ", 1)[-1]
    message = message.removeprefix(_RAISED_IN_SQL)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or os.strerror(errno.ENOSPC) in message:
        message = (f"the disk is full ({message}). Nothing of the step that failed was written and everything committed "
                   "before it is kept: free some space and run the same command again")
    return message


__all__ = ["Backend", "DocumentBatch", "connect", "is_postgres_url", "postgres_dsn", "split_schema", "mask_dsn", "IDENTIFIER",
           "DEFAULT_DB", "DATABASE_ERRORS", "user_message"]
