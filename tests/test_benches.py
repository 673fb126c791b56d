"""Smoke runs of the benches at a tiny size, so that a bench that no longer runs fails the suite
(bench/bench_analysis.py died at its first query for months: sae_model_id raises on an unknown
name, and it relied on NULL). They check that a bench runs and reports, never its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from saedb.backends import connect
from saedb.loaders import load_corpus

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, corpus_of: int | None = None, cache: Path | None = None) -> str:
    """The bench's output; ``corpus_of``: the corpora it loads are that many papers (cached in ``cache``)."""
    env = dict(os.environ)
    if corpus_of is not None:
        assert cache is not None
        env.update(SAEDB_BENCH_LIMIT=str(corpus_of), SAEDB_BENCH_CACHE=str(cache))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_analysis_runs_at_a_tiny_size_and_twice(tmp_path: Path, astro_slice: Path, embedder) -> None:
    db = str(tmp_path / "analysis.duckdb")
    with connect(db) as backend:
        load_corpus(backend, astro_slice, embedder, progress=False)
    first = run_bench("bench_analysis.py", "--db", db, "--k", "4", "--n", "64", "--steps", "20")
    assert "co-occurrence" in first and "families from the co-occurrence table" in first
    again = run_bench("bench_analysis.py", "--db", db, "--k", "4", "--n", "64", "--steps", "20")  # reuses its model
    assert again.splitlines()[0] == first.splitlines()[0]  # "model N: ... codes": the same model


def test_bench_steer_runs_at_a_tiny_size() -> None:
    printed = run_bench("bench_steer.py", "--docs", "200", "--n", "64", "--k", "4", "--repeats", "5")
    assert "steered vector in process" in printed and "bit for bit" in printed


def test_bench_search_runs_at_a_tiny_size() -> None:
    """Both backends beside numpy, faiss and usearch, and the steered recall curve the beams come
    from, on 1,000 synthetic documents (the '1m' scale made small)."""
    printed = run_bench("bench_search.py", "--scales", "1m", "--docs", "1000")
    for row in ("numpy exact top-10 (baseline)", "saedb DuckDB HNSW ef=per query steered", "writable in snapshot()", "steered recall@10 with the beam chosen",
                "faiss HNSW efSearch=100", "usearch HNSW ef=100", "Postgres HNSW ef_search=200 steered", "the one kernel scoring the 10 hits"):
        assert row in printed, row


def test_bench_follow_runs_at_a_tiny_size() -> None:
    """An attached Postgres table searched through saedb beside pgvector by hand, and the triggers'
    cost on bulk writes, at 2,000 and 1,000 rows."""
    printed = run_bench("bench_follow.py", "--docs", "2000", "--trigger-docs", "1000")
    for row in ("steered search p50: saedb through the workspace", "update of 100 rows:", "delete of 100 rows:", "insert of 100 rows:"):
        assert row in printed, (row, printed)


def test_bench_cluster_runs_at_a_tiny_size() -> None:
    """One Postgres server beside a 2-worker Citus cluster on 2,000 documents: every figure and its ratio."""
    printed = run_bench("bench_cluster.py", "--docs", "2000", "--workers", "2")
    for row in ("| load_s |", "| write_back_s |", "| steered_p50_ms |", "| enrichment_vs_rest_s |", "| steered_recall |"):
        assert row in printed, row
    assert "x) |" in printed.split("| load_s |")[1].splitlines()[0]  # the cluster's ratio to the one server


class Parsed(Exception):
    """Raised once a bench has parsed its command line: nothing more of it runs."""


def test_every_bench_line_of_the_makefile_parses_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make bench-search` ran `bench_search.py hh_astro`, which its parser refuses: each bench
    command of the Makefile is parsed here as written (the script stops right after parsing)."""
    import argparse
    import runpy
    import shlex

    lines = re.findall(r"^\t\$\(PY\) (bench/\S+\.py)(.*)$", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert len(lines) >= 10
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        parse(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as `python bench/X.py` puts it first
    for script, arguments in lines:
        if "parse_args" not in (ROOT / script).read_text():  # a bench without options takes none
            assert not arguments.strip(), script
            continue
        monkeypatch.setattr(sys, "argv", [script, *shlex.split(arguments)])
        with pytest.raises(Parsed):
            runpy.run_path(str(ROOT / script), run_name="__main__")


def test_bench_foundation_runs_at_a_tiny_size(tmp_path: Path) -> None:
    printed = run_bench("bench_foundation.py", corpus_of=300, cache=tmp_path)
    assert "pg sae_encode per query" in printed and "duckdb sae_encode, 300 docs" in printed


def test_bench_macros_runs_at_a_tiny_size(tmp_path: Path) -> None:
    printed = run_bench("bench_macros.py", corpus_of=300, cache=tmp_path)
    assert "pure-SQL macro" in printed and "steered search over 300 documents" in printed


def test_bench_compare_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """Both corpora spread over 500 papers each, so astro-ph.EP and .CO both have papers."""
    printed = run_bench("bench_compare.py", "--steps", "3", corpus_of=500, cache=tmp_path)
    assert printed.count("backends:") == 3 and "max |p - scipy|" in printed


def test_bench_scale_runs_at_a_tiny_size() -> None:
    printed = run_bench("bench_scale.py", "--scales", "1000", "--steps", "5", "--n", "64", "--k", "4")
    assert "search at 1,000" in printed and "recall" in printed


def test_bench_serve_runs_at_a_tiny_size() -> None:
    printed = run_bench("bench_serve.py", "--docs", "300", "--parallel", "10", "--steps", "5")
    assert "DuckDB: 10 parallel searches, errors" in printed and "Postgres: 10 parallel searches, errors" in printed


def test_bench_filters_runs_at_a_tiny_size() -> None:
    """saedb's over-fetch beside faiss's filtered walk on 12,000 astro-ph + 1,333 ML papers (enough
    for the ML tenth to get a graph of its own)."""
    printed = run_bench("bench_filters.py", "--astro", "12000", "--queries", "10")
    for row in ("corpus = ML (questions mostly astro-ph) (10%): saedb over-fetch", "faiss filtered walk ef", "a random tenth",
                "saedb on the filter's own graph"):
        assert row in printed, row


def test_bench_search_times_each_row_after_an_untimed_pass() -> None:
    """docs/benchmarks.md says every row is timed warm, as the peers are; the steered and filtered
    rows were timed on their first pass (their walks fault in pages the plain warm-up never touched)."""
    from bench.bench_search import timings

    calls: list[int] = []
    seconds, out = timings(lambda item: calls.append(item) or item * 10, [1, 2, 3])
    assert calls == [1, 2, 3, 1, 2, 3] and out == [10, 20, 30] and len(seconds) == 3
