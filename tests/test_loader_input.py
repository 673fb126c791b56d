"""No silent data loss in the loader, on real DuckDB and Postgres: one bad row (bad bytes, a
NUL, a broken field, a duplicate id) costs that row only, kept in load_errors at its true
line; sources are told apart by their full path."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from saedb.backends import Backend
from saedb.loaders import load_corpus
from saedb.loaders.corpus import read_papers
from tests.conftest import ASTRO


def records(n: int) -> list[dict]:
    with gzip.open(ASTRO, "rt") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def errors_of(backend: Backend, path: Path) -> list[tuple[int, str]]:
    return backend.query("SELECT line, reason FROM load_errors WHERE source = ? ORDER BY line", (str(path.resolve()),))


@pytest.mark.parametrize("compressed", [False, True])
def test_a_non_utf8_byte_costs_only_its_line(backend: Backend, tmp_path: Path, embedder, compressed: bool) -> None:
    lines = [json.dumps(r).encode() for r in records(300)]
    lines[2] = lines[2].replace(b'"title": "', b'"title": "\xff', 1)  # line 3
    lines[249] = lines[249].replace(b'"abstract": "', b'"abstract": "\xc3\x28', 1)  # line 250
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("bytes.jsonl.gz" if compressed else "bytes.jsonl")
    path.write_bytes(gzip.compress(data) if compressed else data)
    report = load_corpus(backend, path, embedder, batch_size=128, progress=False)
    assert (report.added, report.rejected) == (298, 2)
    errors = errors_of(backend, path)
    assert [line for line, _ in errors] == [3, 250] and all("not valid UTF-8" in reason for _, reason in errors)


def test_a_utf8_bom_does_not_cost_the_first_row(backend: Backend, tmp_path: Path, embedder) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(json.dumps(r).encode() for r in records(3)) + b"\n")
    assert load_corpus(backend, path, embedder, progress=False).added == 3


def test_nul_characters_reject_their_row_on_both_backends(backend: Backend, tmp_path: Path, embedder) -> None:
    rows = records(5)
    rows[1]["title"] = "A title\u0000with a NUL"
    rows[3]["id"] = "0704.\u00000001"
    path = tmp_path / "nul.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = load_corpus(backend, path, embedder, progress=False)
    assert (report.added, report.rejected) == (3, 2)
    assert [(line, "NUL" in reason) for line, reason in errors_of(backend, path)] == [(2, True), (4, True)]


def test_boolean_ids_and_in_file_duplicates_are_row_errors(backend: Backend, tmp_path: Path, embedder) -> None:
    rows = records(4)
    lines = [json.dumps(rows[0]), json.dumps({**rows[1], "id": True}), json.dumps(rows[2]), json.dumps(rows[0]), json.dumps(rows[3])]
    path = tmp_path / "ids.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = load_corpus(backend, path, embedder, progress=False)
    assert (report.added, report.rejected, report.duplicates) == (3, 1, 1)
    errors = errors_of(backend, path)
    assert [line for line, _ in errors] == [2, 4]
    assert "id must be a string or an integer" in errors[0][1] and "duplicate id" in errors[1][1] and "line 1" in errors[1][1]
    assert backend.query("SELECT count(*) FROM papers WHERE arxiv_id = 'True'")[0][0] == 0


def test_csv_rows_report_file_lines_and_broken_fields(backend: Backend, tmp_path: Path, embedder) -> None:
    rows = records(4)
    path = tmp_path / "papers.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "title", "abstract", "categories", "year", "venue"])
        writer.writeheader()
        for i, r in enumerate(rows):
            categories = "[broken" if i == 2 else json.dumps(r["categories"])
            title = r["title"] + ("\nsecond line of a quoted title" if i == 0 else "")
            writer.writerow({"id": r["id"], "title": title, "abstract": r["abstract"], "categories": categories,
                             "year": r["year"], "venue": "somewhere"})
    report = load_corpus(backend, path, embedder, progress=False)
    assert (report.added, report.rejected) == (3, 1)
    assert [line for line, _ in errors_of(backend, path)] == [5]  # header 1, a two-line record 2-3, line 4, then 5
    assert "categories" in errors_of(backend, path)[0][1]
    assert report.ignored_columns == ["venue"] and "ignored columns: venue" in report.summary()


def test_same_file_names_in_two_folders_keep_both_files_errors(backend: Backend, tmp_path: Path, embedder) -> None:
    good = records(2)
    paths = []
    for folder, record in (("a", good[0]), ("b", good[1])):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "batch.jsonl"
        path.write_text(json.dumps(record) + "\n{broken\n")
        paths.append(path)
        load_corpus(backend, path, embedder, progress=False)
    assert [len(errors_of(backend, p)) for p in paths] == [1, 1]
    assert backend.count("load_errors") == 2


def test_read_papers_gives_true_line_numbers_after_bad_bytes(tmp_path: Path) -> None:
    lines = [json.dumps(r).encode() for r in records(5)]
    lines[1] = b"\xff\xfe garbage"
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = list(read_papers(path))
    assert [getattr(i, "line") for i in items] == [1, 2, 3, 4, 5]


def test_absurd_rows_cost_only_themselves_and_reruns_finish(backend: Backend, tmp_path: Path, embedder) -> None:
    """A literal NUL byte, a 3 KB id (past Postgres' btree limit), a 10 MB abstract and a line
    nested 5,000 deep each stopped or crashed a whole load (Postgres: every rerun at the same
    batch; both: MemoryError / RecursionError tracebacks). Each is now one row error."""
    rows = records(3000)
    lines = [json.dumps(r) for r in rows]
    lines[10] = json.dumps(rows[10]).replace('"title": "', '"title": "\x00', 1)  # a raw NUL byte inside a string
    lines[1500] = json.dumps({**rows[1500], "id": "x" * 3000})
    lines[2000] = json.dumps({**rows[2000], "abstract": "stellar " * 1_300_000})  # ~10 MB
    lines[2500] = "[" * 5000 + "]" * 5000
    path = tmp_path / "absurd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for _ in range(2):  # the rerun adds nothing and stops nowhere
        report = load_corpus(backend, path, embedder, batch_size=1024, progress=False)
    assert backend.count("papers") == 2996 and report.added == 0 and report.already_loaded == 2996
    errors = errors_of(backend, path)
    assert [line for line, _ in errors] == [11, 1501, 2001, 2501], errors
    reasons = [reason for _, reason in errors]
    assert "control character" in reasons[0] and "id is 3000 characters" in reasons[1]
    assert "MiB" in reasons[2] and "nested" in reasons[3]
    stored = backend.query("SELECT max(length(raw)) FROM load_errors")[0][0]
    assert stored <= 4096  # a rejected row is kept as a bounded excerpt, not 10 MB


def test_the_embedder_sees_a_bounded_text(embedder) -> None:
    """Past the bound (the paper truncates at 8,192 tokens) the rest of a text changes nothing."""
    from saedb.embedders import MAX_EMBED_CHARS

    head = "dark matter halos in cosmological simulations " * (MAX_EMBED_CHARS // 46 + 1)
    vectors = embedder.embed([head, head + "exoplanet transits " * 50_000])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
