"""Which documents a trainer holds out: a rule of (doc id, seed, fraction) alone, so the trainer,
the model's publication and label scoring agree on it without torch or a stored list."""

from __future__ import annotations

from typing import Any

import numpy as np


def held_out(doc_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out documents: a splitmix64 hash of (doc id, seed) below ``fraction``."""
    with np.errstate(over="ignore"):
        z = doc_ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


def holdout_split(metrics: dict[str, Any] | None) -> tuple[float, int] | None:
    """(fraction, seed) of the trainer's held-out split recorded in a model's metrics; None for a
    model saedb did not train (imported) or trained with nothing held out."""
    config = (metrics or {}).get("config") or {}
    fraction = config.get("holdout_fraction")
    return (float(fraction), int(config.get("seed", 0))) if fraction else None
