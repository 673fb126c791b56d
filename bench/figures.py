"""Regenerate the label, family and steering figures of docs/figures.md (the README's table) from the
current defaults (`make figures`): for each corpus, load it with its MiniLM vectors into a fresh
DuckDB file, train a top-k SAE, label it and its untrained control offline (``saedb interp``'s
steps), build families of both, and run the steering evaluation (categories judge, offline
rewrite, random direction); then write the tables, with the command and the commit, to ``--out``.

Every step is seeded (training, labelling, evaluation), so a second run on the same machine
gives the same tables. A run at the paper's 13,300 steps takes about 10 minutes per corpus on
2 CPU cores.

    python bench/figures.py [--steps 13300] [--corpora hh_ml hh_astro] [--out docs/figures.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from saedb.backends import connect  # noqa: E402
from saedb.embedders import get_embedder  # noqa: E402
from saedb.evaluation import get_judge, get_rewriter, run_evaluation, title_queries  # noqa: E402
from saedb.evaluation.report import format_comparison  # noqa: E402
from saedb.families import build_families  # noqa: E402
from saedb.interp import OfflineLabeller, corpus_stats, label_control, run_autointerp  # noqa: E402
from saedb.interp.report import ROWS, LabelFigures, comparison_lines  # noqa: E402
from saedb.interp.roundtrip import RoundTrip  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.trainer import TrainConfig  # noqa: E402
from saedb.trainer.train import publish_untrained, train_from_db  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def corpus_figures(name: str, directory: Path, cfg: TrainConfig, limit: int | None, n_queries: int,
                   category_precision: float) -> dict:
    """Load, train, label model and control, build families, evaluate steering; the figures."""
    with connect(str(directory / f"{name}.duckdb")) as backend:
        load_corpus(backend, DATA / f"{name}.jsonl.gz", "minilm", embeddings=DATA / f"{name}_minilm.parquet", limit=limit,
                    progress=False)
        started = time.perf_counter()
        model_id, result = train_from_db(backend, cfg, name)
        train_seconds = time.perf_counter() - started
        control_id = publish_untrained(backend, model_id)
        stats = corpus_stats(backend)
        figures, shuffled = {}, {}
        for model in (model_id, control_id):
            roundtrip = RoundTrip.for_model(backend, model)
            labeller = OfflineLabeller(stats, roundtrip=roundtrip)
            run_autointerp(backend, model, labeller, roundtrip=roundtrip)
            shuffled[model] = label_control(backend, model, labeller.name, labeller).pearson_margin()
            build_families(backend, model, predictor=labeller)  # names scored: membership fraction
            figures[model] = LabelFigures.of(backend, model, labeller.name)
        family_stats = [(backend.query("SELECT n_families, share_of_features, block_diagonality, membership_fraction "
                                       "FROM family_stats WHERE model_id = ?", (model,)) or [(0, 0.0, None, None)])[0]
                        for model in (model_id, control_id)]  # a model with no family has no row
        run = run_evaluation(backend, model_id, get_embedder("minilm"), get_judge("categories", backend),
                             title_queries(backend, n_queries, seed=0), get_rewriter("offline-rewrite"),
                             f"{n_queries} corpus titles", grid="paper", category_precision=category_precision)
        return {"labeller": labeller.name, "trained": figures[model_id], "untrained": figures[control_id],
                "shuffled": (shuffled[model_id], shuffled[control_id]), "families": family_stats,
                "nmse": (result.metrics["normalised_mse"], result.metrics.get("holdout_normalised_mse")),
                "train_seconds": train_seconds, "evaluation": format_comparison(run)}


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def markdown(results: dict[str, dict], cfg: TrainConfig, command: str) -> str:
    lines = [f"# Figures\n\nMade by `{command}` at commit {commit()} (k={cfg.k}, n={cfg.n_latents}, {cfg.steps:,} steps, "
             f"lr {cfg.lr:g}, seed {cfg.seed}; MiniLM vectors from ../shared/data). Every label figure is given for the trained "
             "SAE and for its untrained control (the same shape and seed, zero steps), labelled and scored the same way.\n"]
    for name, r in results.items():
        train, held = r["nmse"]
        lines += [f"## {name}\n", f"Training: NMSE {train:.3f}, held out {held:.3f}, {r['train_seconds']:.0f} s. "
                  f"Labeller {r['labeller']}.\n", "| figure | trained | untrained | margin |", "| --- | --- | --- | --- |"]
        table = comparison_lines(r["labeller"], r["trained"], r["untrained"])[2 : 2 + len(ROWS)]
        for row, (_, title, _) in zip(table, ROWS):
            lines.append("| " + " | ".join([title, *row[len(title):].split()]) + " |")
        a, b = r["shuffled"]
        lines.append(f"| shuffled-label margin (Pearson, NaN = 0) | {a:+.3f} | {b:+.3f} | {a - b:+.3f} |")
        for label, row in zip(("trained", "untrained"), r["families"]):
            lines.append(f"\nFamilies ({label}): {row[0]} families, {row[1]:.1%} of features in one, block-diagonality "
                         f"{row[2] if row[2] is None else round(row[2], 2)}, membership fraction "
                         f"{row[3] if row[3] is None else round(row[3], 3)}.")
        lines += ["\nSteering (categories judge, offline rewrite, paper grid):\n", "```", r["evaluation"], "```\n"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=["hh_ml", "hh_astro"])
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n", type=int, default=3072)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--limit", type=int, default=None, help="Load at most N documents per corpus (a smoke run).")
    parser.add_argument("--queries", type=int, default=50, help="Title queries of the steering evaluation.")
    parser.add_argument("--category-precision", type=float, default=0.6, help="As saedb eval's.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures.md")
    args = parser.parse_args()
    cfg = TrainConfig(k=args.k, n_latents=args.n, steps=args.steps, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="saedb-figures-") as directory:
        results = {name: corpus_figures(name, Path(directory), cfg, args.limit, args.queries, args.category_precision) for name in args.corpora}
    text = markdown(results, cfg, "python bench/figures.py " + " ".join(sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
