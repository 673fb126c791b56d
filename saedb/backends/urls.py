"""Database URLs: the workspace schema parameter, the libpq form, and the form fit to print."""

from __future__ import annotations

import re

from saedb.errors import ConfigurationError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str) -> bool:
    """A Postgres (or Citus) database; anything else is a DuckDB path or URL."""
    return url.startswith(POSTGRES_SCHEMES)


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
