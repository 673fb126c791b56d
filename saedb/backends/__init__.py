"""Database backends: one interface (``Backend``), DuckDB and PostgreSQL implementations."""

from __future__ import annotations

import errno
import os
import re

import duckdb
import psycopg

from saedb.backends.base import Backend, DocumentBatch
from saedb.errors import ConfigurationError

DEFAULT_DB = "saedb.duckdb"
# Errors the databases raise for bad queries or bad input inside SQL functions.
DATABASE_ERRORS: tuple[type[Exception], ...] = (duckdb.Error, psycopg.Error)


IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its ``schema=NAME`` query parameter, and that name (a workspace schema
    made by ``saedb attach``; None: the database's default schema)."""
    base, _, query = url.partition("?")
    kept, schema = [], None
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        if key == "schema":
            if not IDENTIFIER.match(value):
                raise ConfigurationError(f"schema must be a plain SQL identifier, not {value!r}")
            schema = value
        else:
            kept.append(part)
    return base + ("?" + "&".join(kept) if kept else ""), schema


def postgres_dsn(url: str) -> str:
    """A libpq URL whose sessions resolve names in the URL's workspace schema first."""
    base, schema = split_schema(url)
    if schema is None:
        return base
    return base + ("&" if "?" in base else "?") + f"options=-csearch_path%3D{schema},public"


def postgres_class(dsn: str) -> type[Backend]:
    """CitusBackend where the database has the citus extension, else PostgresBackend: chosen
    here only, so the Postgres backend does not know Citus (which overrides what differs)."""
    import psycopg

    from saedb.backends.citus import CitusBackend
    from saedb.backends.postgres import PostgresBackend

    with psycopg.connect(dsn, autocommit=True) as conn:
        citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    return CitusBackend if citus else PostgresBackend


def connect(url: str = DEFAULT_DB, read_only: bool = False, statement_timeout_s: float = 10.0) -> Backend:
    """Open a backend from a URL: ``postgresql://...`` for Postgres (with Citus where the
    database has the citus extension), otherwise a DuckDB
    file path (``duckdb:///path`` or a plain path; ``:memory:`` for an in-memory DB). A
    ``?schema=NAME`` parameter opens the workspace of a table attached with ``saedb attach``.

    ``read_only`` opens an existing saedb database without migrating it, and refuses writes
    (DuckDB opens the file read-only; Postgres sessions are read-only transactions with
    ``statement_timeout_s``; DuckDB has no statement timeout: callers interrupt instead)."""
    if url.startswith(("postgresql://", "postgres://")):
        dsn = postgres_dsn(url)
        return postgres_class(dsn)(dsn, read_only=read_only, statement_timeout_ms=int(statement_timeout_s * 1000))
    from saedb.backends.duckdb import DuckDBBackend

    path, schema = split_schema(url.removeprefix("duckdb://"))
    return DuckDBBackend(path, read_only=read_only, schema=schema)


def mask_dsn(url: str) -> str:
    """A database URL or libpq keyword string fit to print: every password becomes ***. In a URL
    the credentials run to the last '@' (a password may hold unencoded '@', '/' or '?'); the
    user name may be empty. When in doubt more is hidden, never less."""
    scheme = re.match(r"^postgres(?:ql)?://", url)
    if scheme and "@" in url:
        credentials, _, rest = url[scheme.end():].rpartition("@")
        user, colon, _ = credentials.partition(":")
        url = f"{scheme.group()}{user}{':***' if colon else ''}@{rest}"
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    return re.sub(r"(^|\s)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", r"\1\2***", url)


_UDF_WRAPPER = "Python exception occurred while executing the UDF: "


def user_message(exc: Exception) -> str:
    """A database error as the user should read it: first line, DuckDB's UDF wrapper removed, a
    full disk named as such (DuckDB has no error class for it, only the OS's text)."""
    message = str(exc).split("\n")[0]
    if _UDF_WRAPPER in message:
        message = message.split(_UDF_WRAPPER, 1)[1].split(": ", 1)[-1]
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or os.strerror(errno.ENOSPC) in message:
        message = (f"the disk is full ({message}). Nothing of the step that failed was written and everything committed "
                   "before it is kept: free some space and run the same command again")
    return message


__all__ = ["Backend", "DocumentBatch", "connect", "postgres_dsn", "split_schema", "mask_dsn", "DEFAULT_DB", "DATABASE_ERRORS", "user_message"]
