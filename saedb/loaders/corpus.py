"""Read paper records (id, title, abstract, categories, subjects, date, year) from JSONL
(optionally gzipped), CSV or Parquet files, validating every row.

Malformed rows are yielded as ``RowError`` with their line number and reason, never
dropped silently; a truncated or unreadable file ends with one ``RowError`` saying so.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
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


MAX_ROW_CHARS = 1 << 20  # a row (a JSONL line; title + abstract elsewhere) over 1 MiB is rejected, not parsed
MAX_ID_CHARS = 256  # Postgres' btree index refuses keys over ~2.7 KB; arXiv ids are ~20 characters
RAW_EXCERPT_CHARS = 2000  # how much of a rejected row load_errors keeps


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    raw: str
    ends_file: bool = False  # the file could not be read past this line: the rest of it was not loaded


def excerpt(raw: str) -> str:
    """A rejected row as load_errors keeps it: bounded, and storable (no NUL, which Postgres text refuses)."""
    cut = raw[:RAW_EXCERPT_CHARS] + (f"... ({len(raw)} characters)" if len(raw) > RAW_EXCERPT_CHARS else "")
    return cut.replace("\x00", "\\u0000")


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
        try:
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(";")
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{field} is not a JSON list ({exc.msg}): {value[:60]!r}") from None
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


def too_long(chars: int) -> str:
    return f"row is {chars / (1 << 20):.1f} MiB; rows over {MAX_ROW_CHARS >> 20} MiB are refused"


def parse_paper(record: Any, line: int = 0) -> Paper:
    """Validate one decoded record; raises InvalidInputError with the reason."""
    if not isinstance(record, dict):
        raise InvalidInputError("row is not an object")
    raw_id = record.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, type(None))):
        raise InvalidInputError(f"id must be a string or an integer, not {raw_id!r}")
    arxiv_id = "" if raw_id is None else str(raw_id).strip()
    if not arxiv_id:
        raise InvalidInputError("id is missing or empty")
    if len(arxiv_id) > MAX_ID_CHARS:
        raise InvalidInputError(f"id is {len(arxiv_id)} characters; ids longer than {MAX_ID_CHARS} are refused")
    published, year = _published(record)
    paper = Paper(
        arxiv_id=arxiv_id,
        title=_required_text(record, "title"),
        abstract=_required_text(record, "abstract"),
        categories=_string_list(record, "categories"),
        subjects=_string_list(record, "subjects"),
        published=published,
        year=year,
        line=line,
    )
    if len(paper.title) + len(paper.abstract) > MAX_ROW_CHARS:
        raise InvalidInputError(too_long(len(paper.title) + len(paper.abstract)))
    for name in ("arxiv_id", "title", "abstract", "categories", "subjects"):
        value = getattr(paper, name)
        if any("\x00" in v for v in (value if isinstance(value, list) else [value])):
            raise InvalidInputError(f"{name} contains a NUL character")
    return paper


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")


def check_source(path: Path) -> None:
    """Fail early, before anything is written, on a missing or unsupported file."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if not path.name.lower().endswith((*JSONL_SUFFIXES, ".csv", ".parquet")):
        raise InvalidInputError(f"{path}: unsupported file type (use .jsonl, .jsonl.gz, .csv or .parquet)")


KNOWN_COLUMNS = ("id", "title", "abstract", "categories", "subjects", "date", "year")
BAD_BYTES = re.compile("[\udc80-\udcff]")  # undecodable bytes, kept by errors="surrogateescape"


def _open_text(path: Path):
    """Text lines of a (gzipped) file: a UTF-8 BOM is dropped and bytes that are not UTF-8
    are kept as surrogates, so one bad line is found and reported without stopping the read."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")


def _bad_bytes(text: str) -> InvalidInputError | None:
    found = BAD_BYTES.search(text)
    if found is None:
        return None
    return InvalidInputError(f"line is not valid UTF-8 (byte 0x{ord(found.group()) - 0xDC00:02x} at column {found.start() + 1})")


def _printable(text: str) -> str:
    return BAD_BYTES.sub("\ufffd", text)


def _raw_records(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line number, decoded record or the exception, raw text) for each row."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_ROW_CHARS:
                    yield line_no, InvalidInputError(too_long(len(line))), line
                    continue
                bad = _bad_bytes(line)
                if bad:
                    yield line_no, bad, _printable(line)
                    continue
                try:
                    yield line_no, json.loads(line), line
                except json.JSONDecodeError as exc:
                    yield line_no, InvalidInputError(f"malformed JSON: {exc.msg} at column {exc.colno}"), line
                except RecursionError:
                    yield line_no, InvalidInputError("JSON nested too deeply"), line
    elif name.endswith(".csv"):
        csv.field_size_limit(MAX_ROW_CHARS)  # the module's default 128 KiB rejected long abstracts
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            while True:
                start = reader.line_num + 1  # the record's first line (a quoted field may span lines)
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:  # e.g. a field over the limit: that record only
                    yield start, InvalidInputError(f"malformed CSV record: {exc}"), ""
                    continue
                raw = _printable(json.dumps(row, ensure_ascii=False))
                extra = row.pop(None, None)
                bad = next(filter(None, (_bad_bytes(v) for v in row.values() if isinstance(v, str))), None)
                if bad:
                    yield start, bad, raw
                elif extra:
                    yield start, InvalidInputError(f"row has {len(extra)} more fields than the header"), raw
                else:
                    yield start, row, raw
    else:
        import pyarrow.parquet as pq

        line_no = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                line_no += 1
                yield line_no, row, json.dumps(row, default=str)


def ignored_columns(path: Path) -> list[str]:
    """Columns of a CSV or Parquet file (keys of a JSONL file's first record) that saedb does not read."""
    name = path.name.lower()
    if name.endswith(".csv"):
        with _open_text(path) as handle:
            columns = next(csv.reader(handle), [])
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
    else:
        with _open_text(path) as handle:
            first = next((line for line in handle if line.strip()), "{}")
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            return []
        columns = list(record) if isinstance(record, dict) else []
    return [c for c in columns if c not in KNOWN_COLUMNS]


def read_papers(path: str | Path) -> Iterator[Paper | RowError]:
    """Yield a Paper per valid row and a RowError per rejected row, in file order."""
    path = Path(path)
    check_source(path)
    line_no = 0
    try:
        for line_no, record, raw in _raw_records(path):
            if isinstance(record, Exception):
                yield RowError(line_no, str(record), excerpt(raw))
                continue
            try:
                yield parse_paper(record, line_no)
            except InvalidInputError as exc:
                yield RowError(line_no, str(exc), excerpt(raw))
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, csv.Error, pa.ArrowException) as exc:
        yield RowError(line_no + 1, f"file is truncated or unreadable after line {line_no}: {exc}", "", ends_file=True)
