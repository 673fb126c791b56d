"""Smoke runs of the benches at a tiny size, so that a bench that no longer runs fails the suite
(bench/bench_analysis.py died at its first query for months: sae_model_id raises on an unknown
name, and it relied on NULL). They check that a bench runs and reports, never its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from saedb.backends import connect
from saedb.loaders import load_corpus

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=300)
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


def test_figures_regenerate_at_a_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "figures.md"
    printed = run_bench("figures.py", "--corpora", "hh_ml", "--limit", "400", "--steps", "30", "--k", "4", "--n", "64",
                        "--batch-size", "64", "--queries", "4", "--category-precision", "0.2", "--out", str(out))
    text = out.read_text()
    assert printed.strip() == text.strip()
    assert "| Pearson, held out |" in text and "| round trip hit@5 |" in text and "untrained" in text
    assert "at matched cosine" in text and "random-direction" in text
    again = tmp_path / "again.md"
    run_bench("figures.py", "--corpora", "hh_ml", "--limit", "400", "--steps", "30", "--k", "4", "--n", "64",
              "--batch-size", "64", "--queries", "4", "--category-precision", "0.2", "--out", str(again))
    def figures(markdown: str) -> list[str]:  # without the command line (its --out) and the training time
        return [line for line in markdown.splitlines() if not line.startswith(("Made by", "Training:"))]

    assert figures(text) == figures(again.read_text())  # seeded


def test_bench_steer_runs_at_a_tiny_size() -> None:
    printed = run_bench("bench_steer.py", "--docs", "200", "--n", "64", "--k", "4", "--repeats", "5")
    assert "steered vector in process" in printed and "bit for bit" in printed


def test_bench_search_runs_at_a_tiny_size() -> None:
    """Both backends beside numpy, faiss and usearch, and the steered recall curve the beams come
    from, on 3,000 synthetic documents (the '1m' scale made small)."""
    printed = run_bench("bench_search.py", "--scales", "1m", "--docs", "3000")
    for row in ("numpy exact top-10 (baseline)", "saedb DuckDB HNSW ef=per query steered", "steered recall@10 with the beam chosen",
                "faiss HNSW efSearch=100", "Postgres HNSW ef_search=200 steered"):
        assert row in printed, row
