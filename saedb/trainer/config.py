"""Training configuration, defaults as in O'Neill et al. (2024) / Gao et al. (2024)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    k: int = 64
    n_latents: int = 6144
    batch_size: int = 1024
    lr: float = 1e-4
    epochs: int = 50
    aux_coef: float = 1 / 32  # weight of the AuxK loss
    aux_k_factor: int = 2  # k_aux = aux_k_factor * k
    dead_after_epochs: float = 1.0  # a latent is dead after this many epochs of steps without firing
    grad_clip: float = 1.0
    median_sample: int = 8192  # rows used for the coordinate-median pre-bias
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
