"""Training budget study: normalised MSE on training and held-out documents against optimiser
steps, for the paper's configurations (lr 1e-4, batch 1024) on a corpus of real embeddings.

The paper trains 13,300 steps on 153k-272k documents (50-88 passes). A 38k-87k corpus gets
the same steps in 150-350 passes, so the held-out curve shows where more steps stop helping.

    python bench/bench_budget.py EMBEDDINGS.npz|.parquet [--steps 26600] [--k 32 --n 3072] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from saedb.trainer.config import TrainConfig  # noqa: E402
from saedb.trainer.train import train_sae  # noqa: E402


def read_matrix(path: Path) -> np.ndarray:
    """A float32 matrix from a Parquet file (id, embedding) or an npz of uint8 codes + per-column range."""
    if path.suffix == ".npz":
        saved = np.load(path)
        x = saved["q"].astype(np.float32) / 255 * (saved["hi"] - saved["lo"]) + saved["lo"]
    else:
        import pyarrow.parquet as pq

        x = np.stack(pq.read_table(path).column("embedding").to_numpy(zero_copy_only=False))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("embeddings", type=Path)
    parser.add_argument("--steps", type=int, default=26_600)
    parser.add_argument("--k", type=int, nargs="+", default=[32])
    parser.add_argument("--n", type=int, nargs="+", default=[3072])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    x = read_matrix(args.embeddings)
    for k, n in zip(args.k, args.n):
        cfg = TrainConfig(k=k, n_latents=n, steps=args.steps, lr=args.lr, device=args.device)
        result = train_sae(x, cfg)
        m = result.metrics
        print(f"{args.embeddings.stem} k={k} n={n} lr={args.lr:g} docs={x.shape[0]} passes={args.steps * 1024 / m['samples']:.0f} "
              f"{m['seconds']:.0f}s on {m['device']}: train NMSE {m['normalised_mse']:.4f}, held-out {m['holdout_normalised_mse']:.4f}, "
              f"dead {m['dead_fraction']:.1%}, enc-dec cosine {m['enc_dec_cosine']:.3f}")
        curve = result.holdout_history
        best = min(curve, key=lambda p: p[1])
        print("  held-out NMSE by step: " + ", ".join(f"{s}:{v:.4f}" for s, v in curve[1::2]) + f"  (best {best[1]:.4f} at {best[0]})")
        train_curve = result.history
        print("  train NMSE by step:    " + ", ".join(f"{(i + 1) * 100}:{v:.4f}" for i, v in enumerate(train_curve) if (i + 1) % 10 == 0))


if __name__ == "__main__":
    main()
