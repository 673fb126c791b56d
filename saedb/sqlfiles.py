"""Locate and read the DDL / function scripts kept under the top-level ``sql/`` folder."""

from __future__ import annotations

from pathlib import Path

_CANDIDATES = (
    Path(__file__).resolve().parent / "sql",  # installed wheel (force-included)
    Path(__file__).resolve().parent.parent / "sql",  # source checkout / editable install
)


def sql_dir() -> Path:
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"saedb's sql/ folder not found (looked in {', '.join(map(str, _CANDIDATES))})")


def read_sql(dialect: str, name: str, **params: int | str) -> str:
    """Read ``sql/<dialect>/<name>`` (else the portable ``sql/common/<name>``) and fill
    ``{param}`` placeholders."""
    path = sql_dir() / dialect / name
    text = (path if path.is_file() else sql_dir() / "common" / name).read_text()
    for key, value in params.items():
        text = text.replace("{" + key + "}", str(value))
    return text
