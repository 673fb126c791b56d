"""Read paper records (id, title, abstract, categories, subjects, date, year) from JSONL
(optionally gzipped), CSV or Parquet files, validating every row.

Malformed rows are yielded as ``RowError`` with their line number and reason, never
dropped silently; a truncated or unreadable file ends with one ``RowError`` saying so.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from saedb.errors import InvalidInputError


@dataclass(frozen=True)
class Paper:
    arxiv_id: str
    title: str
    abstract: str
    categories: list[str]
    subjects: list[str]
    published: date | None
    year: int | None
    line: int = field(default=0, compare=False)  # line (JSONL/CSV) or row (Parquet) of the source file

    @property
    def text(self) -> str:
        """What gets embedded: title and abstract."""
        return f"{self.title}\n\n{self.abstract}"


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    raw: str


def _required_text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field} is missing or empty")
    return " ".join(value.split())


def _string_list(record: dict[str, Any], field: str) -> list[str]:
    value = record.get(field)
    if value is None or value == "":
        return []
    if isinstance(value, str):  # CSV: a JSON array or ';'-separated values
        value = json.loads(value) if value.lstrip().startswith("[") else value.split(";")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{field} must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def _published(record: dict[str, Any]) -> tuple[date | None, int | None]:
    raw_date, raw_year = record.get("date"), record.get("year")
    published = None
    if raw_date not in (None, ""):
        try:
            published = date.fromisoformat(str(raw_date)[:10])
        except ValueError:
            raise InvalidInputError(f"date {raw_date!r} is not an ISO date") from None
    year = None
    if raw_year not in (None, ""):
        try:
            year = int(raw_year)
        except (TypeError, ValueError):
            raise InvalidInputError(f"year {raw_year!r} is not an integer") from None
        if not 1000 <= year <= 9999:
            raise InvalidInputError(f"year {year} is out of range")
    elif published is not None:
        year = published.year
    return published, year


def parse_paper(record: Any, line: int = 0) -> Paper:
    """Validate one decoded record; raises InvalidInputError with the reason."""
    if not isinstance(record, dict):
        raise InvalidInputError("row is not an object")
    raw_id = record.get("id")
    arxiv_id = str(raw_id).strip() if isinstance(raw_id, (str, int)) else ""
    if not arxiv_id:
        raise InvalidInputError("id is missing or empty")
    published, year = _published(record)
    return Paper(
        arxiv_id=arxiv_id,
        title=_required_text(record, "title"),
        abstract=_required_text(record, "abstract"),
        categories=_string_list(record, "categories"),
        subjects=_string_list(record, "subjects"),
        published=published,
        year=year,
        line=line,
    )


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


def check_source(path: Path) -> None:
    """Fail early, before anything is written, on a missing or unsupported file."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if not path.name.lower().endswith((*JSONL_SUFFIXES, ".csv", ".parquet")):
        raise InvalidInputError(f"{path}: unsupported file type (use .jsonl, .jsonl.gz, .csv or .parquet)")


def _raw_records(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line number, decoded record or the exception, raw text) for each row."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_no, json.loads(line), line
                except json.JSONDecodeError as exc:
                    yield line_no, InvalidInputError(f"malformed JSON: {exc.msg} at column {exc.colno}"), line
    elif name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as handle:
            for line_no, row in enumerate(csv.DictReader(handle), start=2):
                yield line_no, row, json.dumps(row)
    else:
        import pyarrow.parquet as pq

        line_no = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                line_no += 1
                yield line_no, row, json.dumps(row, default=str)


def read_papers(path: str | Path) -> Iterator[Paper | RowError]:
    """Yield a Paper per valid row and a RowError per rejected row, in file order."""
    path = Path(path)
    check_source(path)
    line_no = 0
    try:
        for line_no, record, raw in _raw_records(path):
            if isinstance(record, Exception):
                yield RowError(line_no, str(record), raw)
                continue
            try:
                yield parse_paper(record, line_no)
            except InvalidInputError as exc:
                yield RowError(line_no, str(exc), raw)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        yield RowError(line_no + 1, f"file is truncated or unreadable after line {line_no}: {exc}", "")
