"""Scaling grid: train SAEs over (k, n), store the metrics in SQL, fit L ∝ n^α per k (and
L ∝ k^β per n: both also the scaling_fits view) and plot normalised MSE against width, k and
training compute (the paper's Figure 2).

Grid runs record metrics only; they do not publish model versions or codes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from saedb.backends import Backend
from saedb.errors import InvalidInputError
from saedb.trainer.config import TrainConfig
from saedb.trainer.train import load_training_matrix, train_sae

RUN_COLUMNS = ("k", "n_latents", "steps", "samples", "train_flops", "normalised_mse", "dead_fraction", "l0", "seconds")


@dataclass(frozen=True)
class PowerLaw:
    """normalised MSE ≈ coefficient * n ** alpha for one k."""

    k: int
    alpha: float
    coefficient: float

    def __call__(self, n: np.ndarray) -> np.ndarray:
        return self.coefficient * np.asarray(n, dtype=float) ** self.alpha


def training_flops(d: int, n: int, k: int, steps: int, batch_size: int) -> float:
    """Forward + backward FLOPs: dense encoder (2dn forward, 2dn weight gradient) and the
    sparse decoder (about 6dk) per sample, for steps x batch_size samples."""
    return float(steps) * batch_size * (4 * d * n + 6 * d * k)


def run_grid(
    backend: Backend,
    ks: Iterable[int],
    ns: Iterable[int],
    base: TrainConfig,
    grid: str = "default",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """Train every (k, n) with k < n and store one scaling_runs row per run (re-runs replace)."""
    x = load_training_matrix(backend)
    runs = []
    for k in sorted(set(ks)):
        for n in sorted(set(ns)):
            if k >= n:
                continue
            metrics = train_sae(x, replace(base, k=k, n_latents=n)).metrics
            run = {
                "k": k, "n_latents": n, "steps": base.steps, "samples": x.shape[0],
                "train_flops": training_flops(x.shape[1], n, k, base.steps, base.batch_size),
                **{key: metrics[key] for key in ("normalised_mse", "dead_fraction", "l0", "seconds")},
            }
            with backend.transaction():
                backend.execute("DELETE FROM scaling_runs WHERE grid = ? AND k = ? AND n_latents = ?", (grid, k, n))
                backend.execute(
                    f"INSERT INTO scaling_runs (grid, {', '.join(RUN_COLUMNS)}) VALUES (?{', ?' * len(RUN_COLUMNS)})",
                    (grid, *(run[c] for c in RUN_COLUMNS)),
                )
            runs.append(run)
            if log:
                log(f"k={k:<4} n={n:<6} normalised MSE {run['normalised_mse']:.4f}  dead {run['dead_fraction']:.1%}  {run['seconds']:.1f}s")
    if not runs:
        raise InvalidInputError("the grid is empty: every n must exceed some k")
    return runs


def load_runs(backend: Backend, grid: str = "default") -> list[dict[str, float]]:
    rows = backend.query(f"SELECT {', '.join(RUN_COLUMNS)} FROM scaling_runs WHERE grid = ? ORDER BY k, n_latents", (grid,))
    return [dict(zip(RUN_COLUMNS, row)) for row in rows]


def fit_power_laws(runs: list[dict[str, float]]) -> list[PowerLaw]:
    """Least-squares fit of log L = log c + α log n for each k with at least two widths."""
    fits = []
    for k in sorted({int(r["k"]) for r in runs}):
        points = [(r["n_latents"], r["normalised_mse"]) for r in runs if r["k"] == k]
        if len(points) < 2:
            continue
        n, loss = np.array(points, dtype=float).T
        alpha, log_c = np.polyfit(np.log(n), np.log(loss), 1)
        fits.append(PowerLaw(k=k, alpha=float(alpha), coefficient=float(np.exp(log_c))))
    return fits


def plot_scaling(runs: list[dict[str, float]], fits: list[PowerLaw], out_dir: str | Path) -> list[Path]:
    """Normalised MSE vs n (one line per k), vs k (one per n) and vs training FLOPs, log-log
    (PNG and SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, (by_width, by_k, by_compute) = plt.subplots(1, 3, figsize=(15, 4.2))
    for fit in fits:
        rows = sorted((r for r in runs if r["k"] == fit.k), key=lambda r: r["n_latents"])
        n = np.array([r["n_latents"] for r in rows])
        loss = np.array([r["normalised_mse"] for r in rows])
        (line,) = by_width.plot(n, loss, "o", label=f"k={fit.k}  α={fit.alpha:.2f}")
        by_width.plot(n, fit(n), "--", color=line.get_color())
        by_compute.plot([r["train_flops"] for r in rows], loss, "o-", color=line.get_color(), label=f"k={fit.k}")
    for n in sorted({int(r["n_latents"]) for r in runs}):
        rows = sorted((r for r in runs if r["n_latents"] == n), key=lambda r: r["k"])
        if len(rows) >= 2:
            k, loss = np.array([(r["k"], r["normalised_mse"]) for r in rows], dtype=float).T
            beta, log_c = np.polyfit(np.log(k), np.log(loss), 1)
            (line,) = by_k.plot(k, loss, "o", label=f"n={n}  β={beta:.2f}")
            by_k.plot(k, np.exp(log_c) * k ** beta, "--", color=line.get_color())
    for axis, xlabel in ((by_width, "latents n"), (by_k, "active latents k"), (by_compute, "training compute (FLOPs)")):
        axis.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="normalised MSE")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    by_width.set_title("L ∝ n^α")
    by_k.set_title("L ∝ k^β")
    by_compute.set_title("loss vs compute")
    fig.tight_layout()
    paths = [out_dir / "scaling.png", out_dir / "scaling.svg"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
