"""Smoke runs of the training and labelling benches at a tiny size (beside tests/test_benches.py,
so the two files run on both pytest workers): each runs and reports, its figures unchecked."""

from __future__ import annotations

from pathlib import Path

from tests.test_benches import ROOT, run_bench


def test_bench_trainer_runs_at_a_tiny_size(tmp_path: Path) -> None:
    printed = run_bench("bench_trainer.py", "--n", "64", "--k", "4", "--steps", "2", "--batch", "64", corpus_of=300, cache=tmp_path)
    assert "samples/s vs reference loop" in printed and "vs GEMM floor" in printed


def test_bench_parallel_runs_at_a_tiny_size(tmp_path: Path) -> None:
    printed = run_bench("bench_parallel.py", "--steps", "2", "--nproc", "2", corpus_of=300, cache=tmp_path)
    assert "2 processes: held-out NMSE" in printed


def test_bench_lineage_runs_at_a_tiny_size_and_writes_its_figure_where_asked(tmp_path: Path) -> None:
    committed = (ROOT / "docs" / "scaling" / "scaling.svg").read_bytes()
    printed = run_bench("bench_lineage.py", "--steps", "2", "--named", "16:64,32:128,64:192", "--grid-steps", "2",
                        "--grid-k", "4,8", "--grid-n", "32,64",
                        "--out", str(tmp_path / "scaling"), corpus_of=300, cache=tmp_path)
    assert "mean max decoder cosine" in printed and "scaling fits over grid" in printed
    assert (tmp_path / "scaling" / "scaling.png").is_file()
    assert (ROOT / "docs" / "scaling" / "scaling.svg").read_bytes() == committed  # the committed figure is left alone


def test_bench_budget_runs_at_a_tiny_size() -> None:
    printed = run_bench("bench_budget.py", str(ROOT.parent / "shared" / "data" / "hh_ml_minilm.parquet"), "--steps", "3",
                        "--k", "4", "--n", "64")
    assert "held-out NMSE by step" in printed


def test_bench_llm_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """The base model by the completion protocol, one feature, short replies (needs `make llm`, as
    the suite does). The base model reads a prompt about 1.5 times as fast as the instruct one,
    which tests/test_llm_instruct.py runs under both protocols."""
    printed = run_bench("bench_llm.py", "--features", "1", "--steps", "5", "--max-tokens", "8", "--models", "gemma3-270m",
                        "--protocols", "completion", corpus_of=1000, cache=tmp_path)
    assert "offline" in printed and "llm:gemma3-270m:completion" in printed


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
