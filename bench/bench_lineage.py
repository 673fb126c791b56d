"""The paper's §7 cross-model figures and its scaling laws on hh_ml's MiniLM vectors.

1. SAE16 (k=16, n=3072), SAE32 (32, 6144) and SAE64 (64, 9216), the paper's named models,
   trained here twice: each with its own seed, and all with one seed (then a wider model's
   first rows start as the narrower one's rows, and part of any match is inherited from the
   initialisation); matched pairwise by `saedb match`, the mean max decoder cosine of each
   direction beside the paper's and beside random unit rows of the same shapes (the control).
2. A (k, n) grid (saedb grid) and the scaling_fits view: L ∝ n^α per k and L ∝ k^β per n,
   beside the paper's α (its cs.LG curves, paper-notes §2.8); the figure in docs/scaling/.

    python bench/bench_lineage.py [--steps 2000] [--grid-steps 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, ml_minilm  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.lineage import best_matches, match_models  # noqa: E402
from saedb.trainer import TrainConfig  # noqa: E402
from saedb.trainer.scaling import fit_power_laws, load_runs, plot_scaling, run_grid  # noqa: E402
from saedb.trainer.train import train_from_db  # noqa: E402

PAPER_MAX_COSINE = {(16, 32): 0.878, (32, 64): 0.595, (16, 64): 0.795}  # multiple_cosine_sim_histograms.pdf
PAPER_ALPHA_CS_LG = {16: -0.134, 32: -0.142, 64: -0.174}  # n in 3072..12288, d = 1536


def named_models(backend, steps: int, shared_seed: bool, named: dict[int, int]) -> dict[int, int]:
    """The paper's three named SAEs (``named``: k -> n), trained once per width, step budget and
    seeding (model names carry all three): each its own seed, or one seed for all (then a wider model starts with the narrower
    one's rows among its own: xavier-uniform rows of one random stream, normalised)."""
    models = {}
    for k, n in named.items():
        name = f"paper-sae{k}-{n}-{steps}" + ("-seed0" if shared_seed else "")
        found = backend.query("SELECT max(model_id) FROM sae_models WHERE name = ? AND status = 'ready'", (name,))[0][0]
        if found is None:
            start = time.perf_counter()
            found, result = train_from_db(backend, TrainConfig(k=k, n_latents=n, steps=steps, seed=0 if shared_seed else k), name)
            print(f"trained {name}: NMSE {result.metrics['normalised_mse']:.3f} (held out {result.metrics['holdout_normalised_mse']:.3f}), "
                  f"dead {result.metrics['dead_fraction']:.1%}, {time.perf_counter() - start:.0f} s", flush=True)
        models[k] = int(found)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000, help="Steps per named SAE (2000 x 1024 = 54 passes over hh_ml).")
    parser.add_argument("--grid-steps", type=int, default=1000)
    parser.add_argument("--grid-k", default="16,32,64")
    parser.add_argument("--grid-n", default="1536,3072,6144")
    parser.add_argument("--named", default="16:3072,32:6144,64:9216", help="k:n of the paper's three named SAEs.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scaling", help="Folder of the scaling figure.")
    args = parser.parse_args()
    named = {int(k): int(n) for k, n in (pair.split(":") for pair in args.named.split(","))}
    with connect(ml_minilm()) as backend:
        dim = backend.require_embedder()[1]
        print(f"mean max decoder cosine, hh_ml MiniLM (d={dim}), {args.steps} steps; paper: cs.LG/astro, d=1536; "
              f"control: random unit rows of the same shapes")
        print(f"{'seeds':<10}{'pair':<14}{'small -> large':>16}{'large -> small':>16}{'control':>9}{'paper':>8}{'seconds':>9}")
        rng = np.random.default_rng(0)
        for shared_seed in (False, True):
            models = named_models(backend, args.steps, shared_seed, named)
            for small, large in PAPER_MAX_COSINE:
                start = time.perf_counter()
                forward, backward = match_models(backend, models[small], models[large])
                seconds = time.perf_counter() - start
                control = best_matches(rng.standard_normal((named[small], dim)), rng.standard_normal((named[large], dim)))[1].mean()
                print(f"{'one' if shared_seed else 'own':<10}SAE{small}-SAE{large:<6}{forward['mean_max_cosine']:>16.3f}"
                      f"{backward['mean_max_cosine']:>16.3f}{control:>9.3f}{PAPER_MAX_COSINE[(small, large)]:>8.3f}{seconds:>9.1f}")
                print(f"{'':<24}SAE{small} features split into 2+ SAE{large} features: {forward['split_features']} (largest "
                      f"{forward['largest_split']}); orphans (max cosine < 0.5) {forward['orphans']} / {backward['orphans']}; "
                      f"mutual {forward['mutual']}")

        grid = f"minilm-{args.grid_steps}"
        ks, ns = [int(v) for v in args.grid_k.split(",")], [int(v) for v in args.grid_n.split(",")]
        have = {(k, n) for k, n in backend.query("SELECT k, n_latents FROM scaling_runs WHERE grid = ?", (grid,))}
        missing = [(k, n) for k in ks for n in ns if (k, n) not in have]
        for k, n in missing:
            run_grid(backend, [k], [n], TrainConfig(steps=args.grid_steps, seed=0), grid=grid, log=print)
        print(f"\nscaling fits over grid {grid} (view scaling_fits): L = c * n^alpha per k, L = c * k^beta per n")
        for along, k, n, runs, exponent, coefficient, r2 in backend.query(
                "SELECT along, k, n_latents, runs, exponent, coefficient, r2 FROM scaling_fits WHERE grid = ? ORDER BY along DESC, k, n_latents",
                (grid,)):
            paper = f"  paper alpha (cs.LG) {PAPER_ALPHA_CS_LG[k]:+.3f}" if along == "n" and k in PAPER_ALPHA_CS_LG else ""
            label = f"k={k}" if along == "n" else f"n={n}"
            print(f"L({along}) at {label:<7} exponent {exponent:+.3f}  coefficient {coefficient:.3f}  r2 {r2:.3f}  ({runs} runs){paper}")
        runs = load_runs(backend, grid)
        for path in plot_scaling(runs, fit_power_laws(runs), args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
