"""Loading real corpus slices into real DuckDB and Postgres: content, idempotency,
resumability after kill -9, and clear accounting of malformed input."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from typer.testing import CliRunner

from saedb.backends import Backend, connect
from saedb.cli import app
from saedb.errors import ConfigurationError, InvalidInputError
from saedb.loaders import load_corpus, read_papers
from saedb.loaders.corpus import Paper
from tests.conftest import ASTRO

ROOT = Path(__file__).resolve().parent.parent


def first_records(path: Path, n: int) -> list[dict]:
    with gzip.open(path, "rt") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def test_loads_real_slice_with_metadata_and_unit_embeddings(loaded: Backend, astro_slice: Path, embedder) -> None:
    assert loaded.count("papers") == 400
    assert loaded.count("embeddings") == 400
    record = first_records(astro_slice, 3)[2]
    row = loaded.query(
        "SELECT title, categories, subjects, CAST(published AS VARCHAR), year, corpus FROM papers WHERE arxiv_id = ?",
        (record["id"],),
    )[0]
    assert row[0] == " ".join(record["title"].split())
    assert list(row[1]) == record["categories"] and list(row[2]) == record["subjects"]
    assert (row[3], row[4], row[5]) == (record["date"], record["year"], "astro_400")
    stored = loaded.fetch_vectors(
        "SELECT e.embedding FROM embeddings e JOIN papers p USING (doc_id) WHERE p.arxiv_id = ?", (record["id"],)
    )[0]
    expected = embedder.embed([Paper(record["id"], " ".join(record["title"].split()), " ".join(record["abstract"].split()), [], [], None, None).text])[0]
    np.testing.assert_allclose(stored, expected, rtol=1e-6, atol=1e-7)
    assert abs(np.linalg.norm(stored) - 1) < 1e-5


def test_reload_is_idempotent_and_limit_extends(backend: Backend, astro_slice: Path, embedder) -> None:
    first = load_corpus(backend, astro_slice, embedder, limit=150, batch_size=64, progress=False)
    again = load_corpus(backend, astro_slice, embedder, limit=150, batch_size=64, progress=False)
    more = load_corpus(backend, astro_slice, embedder, limit=250, batch_size=64, progress=False)
    assert (first.added, again.added, again.already_loaded) == (150, 0, 150)
    assert (more.added, more.already_loaded) == (100, 150)
    assert backend.count("papers") == backend.count("embeddings") == 250
    assert backend.query("SELECT count(DISTINCT arxiv_id) FROM papers")[0][0] == 250


def test_two_corpora_share_one_database(loaded: Backend, ml_slice: Path, embedder) -> None:
    report = load_corpus(loaded, ml_slice, embedder, progress=False)
    corpora = dict(loaded.query("SELECT corpus, count(*) FROM papers GROUP BY corpus"))
    assert corpora["astro_400"] == 400
    assert corpora["ml_200"] == report.added == 200 - report.already_loaded - report.duplicates


def test_malformed_rows_are_counted_reported_and_kept(backend: Backend, tmp_path: Path, astro_slice: Path, embedder) -> None:
    good = first_records(astro_slice, 4)
    lines = [
        json.dumps(good[0]),
        "{not json",
        json.dumps({**good[1], "abstract": ""}),
        json.dumps({**good[2], "year": "soon"}),
        json.dumps({**good[3], "categories": "astro-ph;hep-th"}),
        json.dumps({k: v for k, v in good[1].items() if k != "id"}),
        json.dumps(good[0]),  # duplicate id
        json.dumps(["a", "list"]),
        json.dumps({**good[1], "title": None}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = load_corpus(backend, path, embedder, progress=False)
    assert (report.added, report.rejected, report.duplicates) == (2, 6, 1)
    errors = backend.query("SELECT line, reason FROM load_errors WHERE source = ? ORDER BY line", (str(path.resolve()),))
    assert [line for line, _ in errors] == [2, 3, 4, 6, 7, 8, 9]  # line 7: the duplicate id, kept but not counted as rejected
    reasons = dict(errors)
    assert "malformed JSON" in reasons[2] and "abstract is missing" in reasons[3]
    assert "year 'soon'" in reasons[4] and "id is missing" in reasons[6] and "not an object" in reasons[8]
    assert sorted(backend.query("SELECT categories FROM papers WHERE arxiv_id = ?", (good[3]["id"],))[0][0]) == ["astro-ph", "hep-th"]
    load_corpus(backend, path, embedder, progress=False)  # re-run records nothing twice
    assert backend.count("load_errors") == 7 and backend.count("papers") == 2


def test_truncated_gzip_loads_what_it_can_and_says_so(backend: Backend, tmp_path: Path, astro_slice: Path, embedder) -> None:
    data = astro_slice.read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    report = load_corpus(backend, path, embedder, batch_size=50, progress=False)
    assert 100 < report.added < 400 and report.rejected == 1
    assert "truncated" in report.first_errors[0].reason and report.unread == report.first_errors[0]
    assert backend.count("papers") == report.added


def test_a_load_that_could_not_read_the_whole_file_exits_non_zero_keeping_its_rows(tmp_path: Path, astro_slice: Path) -> None:
    """Issue 54: a gzip cut mid-stream loaded its complete lines, reported the rest, and exited
    0, so a script checking the exit code never noticed that the rest of the file was lost."""
    data = astro_slice.read_bytes()
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 3])
    db = str(tmp_path / "cut.duckdb")
    result = CliRunner().invoke(app, ["load", str(path), "--db", db])
    assert result.exit_code == 2, result.output
    assert "could not be read to its end" in result.output and "load it again" in result.output
    added = int(result.output.split("added ")[1].split(",")[0])
    with connect(db) as backend:
        assert added > 50 and backend.count("papers") == added


def test_csv_and_parquet_read_like_jsonl(tmp_path: Path, astro_slice: Path) -> None:
    records = first_records(astro_slice, 20)
    expected = [p for p in read_papers(astro_slice)][:20]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    import csv

    with open(tmp_path / "p.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({**r, "categories": json.dumps(r["categories"]), "subjects": ";".join(r["subjects"])} for r in records)
    assert list(read_papers(tmp_path / "p.parquet")) == expected
    assert list(read_papers(tmp_path / "p.csv")) == expected


def test_unsupported_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file"):
        list(read_papers(tmp_path / "missing.jsonl"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        list(read_papers(tmp_path / "x.txt"))


def test_second_embedder_is_refused(loaded: Backend, astro_slice: Path) -> None:
    class Other:
        name, dim = "other-128", 128

        def embed(self, texts):  # never reached
            raise AssertionError

    with pytest.raises(ConfigurationError, match="wordllama-256 embeddings"):
        load_corpus(loaded, astro_slice, Other(), progress=False)
    assert loaded.count("papers") == 400


def test_resumes_after_kill_9(db_url: str) -> None:
    """kill -9 mid-load loses nothing committed and leaves no half batch; a re-run completes it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    total, batch = 3000, 100
    cmd = [sys.executable, "-m", "saedb.cli", "load", str(ASTRO), "--db", db_url, "--batch-size", str(batch), "--limit", str(total)]
    child = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env)
    seen, done = b"", [0]
    while max(done) < 300:
        chunk = os.read(child.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
        done += [int(m) for m in re.findall(rb"(\d+)/3000", seen)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 300 <= max(done) < total, f"load was not caught mid-way: {seen[-300:]!r}"
    with connect(db_url) as backend:
        papers, embeddings = backend.count("papers"), backend.count("embeddings")
    assert papers == embeddings and papers % batch == 0 and 300 <= papers < total
    rerun = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    assert f"added {total - papers}, {papers} already loaded" in rerun.stdout
    with connect(db_url) as backend:
        assert backend.count("papers") == backend.count("embeddings") == total
        assert backend.query("SELECT count(DISTINCT arxiv_id) FROM papers")[0][0] == total


def test_a_duckdb_load_checkpoints_rarely_and_restores_the_setting(tmp_path: Path, astro_slice: Path, embedder) -> None:
    """A load commits batch by batch; DuckDB's default checkpoint every 16 MB of log rewrote
    the indexes each time (quadratic at 1M documents). During the load the threshold is
    raised; afterwards the connection's own setting is back, also when the load fails."""
    db = str(tmp_path / "bulk.duckdb")
    with connect(db) as backend:
        backend.execute("SET checkpoint_threshold = '20MB'")
        insert, seen = backend.insert_documents, []

        def fail(batch):
            raise RuntimeError("disk full")

        backend.insert_documents = fail  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            load_corpus(backend, astro_slice, embedder, batch_size=100, progress=False)
        assert backend.query("SELECT current_setting('checkpoint_threshold')")[0][0].startswith("19.0 MiB")

        def spy(batch):
            seen.append(backend.query("SELECT current_setting('checkpoint_threshold')")[0][0])
            return insert(batch)

        backend.insert_documents = spy  # type: ignore[method-assign]
        load_corpus(backend, astro_slice, embedder, batch_size=100, progress=False)
        assert len(seen) == 4 and all(value.startswith("953") for value in seen)  # 1 GB
        assert backend.query("SELECT current_setting('checkpoint_threshold')")[0][0].startswith("19.0 MiB")


def test_two_first_loads_at_once_bind_the_embedder_once(pg_dsn: str, embedder) -> None:
    """Issue 54: two loads racing on a fresh Postgres database crashed one of them (duplicate
    key on saedb_meta_pkey). The second binding waits for the first and then finds it bound."""
    import threading
    import time

    import psycopg

    failures: list[BaseException] = []

    def bind(backend: Backend) -> None:
        try:
            backend.bind_embedder(embedder.name, embedder.dim)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            failures.append(exc)

    with connect(pg_dsn) as first, connect(pg_dsn) as second:
        with first.transaction():
            first.bind_embedder(embedder.name, embedder.dim)  # not yet committed
            racing = threading.Thread(target=bind, args=(second,))
            racing.start()
            with psycopg.connect(pg_dsn, autocommit=True) as watch:  # until the second waits on the first's lock
                while racing.is_alive() and watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                                          (second.conn.info.backend_pid,)).fetchone() != ("Lock",):
                    time.sleep(0.01)
        racing.join()
        assert failures == [] and second.embedder() == (embedder.name, embedder.dim)


class LoadsTheSameFileFirst:
    """An embedder that, before its first batch is written, has another connection load the
    same file: a concurrent load that wins every row."""

    def __init__(self, inner, url: str, path: Path) -> None:
        self.inner, self.url, self.path, self.name, self.dim, self.raced = inner, url, path, inner.name, inner.dim, False

    def embed(self, texts: list[str]) -> np.ndarray:
        if not self.raced:
            self.raced = True
            with connect(self.url) as other:
                load_corpus(other, self.path, self.inner, progress=False)
        return self.inner.embed(texts)


def test_a_load_summary_accounts_for_rows_a_concurrent_load_added(pg_dsn: str, astro_slice: Path, embedder) -> None:
    """Issue 54: of two loads of the same rows at once, the second printed 'read 1500 valid rows,
    added 0, 0 already loaded, ... 0 rejected': the rows the other load took were in no count."""
    with connect(pg_dsn) as backend:
        report = load_corpus(backend, astro_slice, LoadsTheSameFileFirst(embedder, pg_dsn, astro_slice), batch_size=10_000,
                             progress=False)
        assert report.added == 0 and report.already_loaded == report.read == backend.count("papers") > 0, report.summary()
