"""Training configuration, defined once: the trainer reads it and the CLI's `train` and `grid`
options are generated from it (``saedb.cli.config_options``), so defaults cannot drift apart.

Defaults are the paper's (O'Neill et al. 2024, ``../shared/paper-notes.md`` §2): Adam at
lr 1e-4, batch 1024, 13,300 optimiser steps (astro-ph: 266 batches x 50 epochs; cs.LG:
150 x 88), AuxK with k_aux = 2k at 1/32, a latent dead after 266 steps without firing.
One deviation, measured: the encoder starts at f·s·W_decᵀ, s the least-squares scale of the
first reconstruction and f = 0.3 (``fit_encoder_scale``, ``encoder_scale_factor``; the paper's
W_decᵀ when off): held-out NMSE on hh_ml at k=32, n=3072 after 3,000 steps at lr 1e-4 went
from 0.301 (W_decᵀ) to 0.286 (f = 1) and 0.263 (f = 0.3); at k=64, n=6144 after 1,500 steps
from 0.234 to 0.232 (f = 1 → 0.3) with no more dead latents (docs/paper-protocol.md).
The budget is in steps, not epochs, so a 38k-document corpus gets the paper's number of
updates (about 357 passes over it) rather than 1/7 of them; ``holdout_fraction`` keeps a
slice of the documents out of training so over-fitting would show as a gap in NMSE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from saedb.errors import InvalidInputError


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    k: int = field(default=64, metadata=_help("Active latents per embedding (top-k)."))
    n_latents: int = field(default=6144, metadata=_help("Number of latents (dictionary size)."))
    batch_size: int = field(default=1024, metadata=_help("Embeddings per optimiser step."))
    lr: float = field(default=1e-4, metadata=_help("Adam learning rate."))
    steps: int = field(default=13_300, metadata=_help("Optimiser steps (the paper: 13,300 at batch 1024)."))
    aux_coef: float = field(default=1 / 32, metadata=_help("Weight of the AuxK loss."))
    aux_k_factor: int = field(default=2, metadata=_help("k_aux = aux_k_factor * k."))
    dead_steps: int = field(default=266, metadata=_help("Steps without firing after which a latent counts as dead."))
    grad_clip: float = field(default=1.0, metadata=_help("Global gradient-norm clip."))
    median_sample: int = field(default=10_000, metadata=_help("Rows used for the coordinate-median pre-bias (and the encoder scale)."))
    fit_encoder_scale: bool = field(default=True, metadata=_help(
        "Start the encoder at f * s * W_dec^T, s fitted by least squares on the median sample (off: the paper's W_dec^T)."))
    encoder_scale_factor: float = field(default=0.3, metadata=_help(
        "f: the share of the fitted scale the encoder starts at (1: the least-squares fit)."))
    holdout_fraction: float = field(default=0.05, metadata=_help("Share of documents held out to measure NMSE on unseen data."))
    chunk_rows: int = field(default=131_072, metadata=_help(
        "Embeddings held in memory at once: a larger corpus is streamed from the database in chunks of this many rows."))
    seed: int = field(default=0, metadata=_help("Random seed (initialisation, batches, hold-out split)."))
    device: str | None = field(default=None, metadata=_help("cuda or cpu (default: cuda when available)."))

    def __post_init__(self) -> None:
        problems = []
        if self.n_latents < 1 or not 0 < self.k <= self.n_latents:
            problems.append(f"k must be in 1..n_latents, got k={self.k}, n_latents={self.n_latents}")
        for name in ("batch_size", "steps", "aux_k_factor", "dead_steps", "median_sample", "chunk_rows"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip", "encoder_scale_factor"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a positive finite number, got {value}")
        if not (math.isfinite(self.aux_coef) and self.aux_coef >= 0):
            problems.append(f"aux_coef must be finite and >= 0, got {self.aux_coef}")
        if not 0 <= self.holdout_fraction < 0.5:
            problems.append(f"holdout_fraction must be in [0, 0.5), got {self.holdout_fraction}")
        if problems:
            raise InvalidInputError("; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
