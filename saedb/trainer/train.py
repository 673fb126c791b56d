"""Training loop: normalised MSE + AuxK on dead latents, decoder-gradient projection,
gradient clipping, unit-norm decoder after every step (Gao et al. 2024, as used by
O'Neill et al. 2024).

Memory: ``train_from_db`` holds the whole embedding matrix once (rows x d float32, e.g.
87k x 256 = 89 MB), shuffled into batches each epoch; codes are written back in
8192-row batches by ``publish_model``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from saedb.backends import Backend
from saedb.errors import InvalidInputError
from saedb.models import publish_model
from saedb.trainer.config import TrainConfig
from saedb.trainer.topk_sae import TopKSAE, normalised_mse


@dataclass
class TrainResult:
    model: TopKSAE
    metrics: dict[str, float]
    history: list[float] = field(default_factory=list)  # normalised MSE per epoch


def pick_device(requested: str | None) -> torch.device:
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def coordinate_median(x: torch.Tensor, sample: int, generator: torch.Generator) -> torch.Tensor:
    rows = torch.randperm(x.shape[0], generator=generator)[:sample]
    return x[rows].median(dim=0).values


@torch.no_grad()
def evaluate(model: TopKSAE, x: torch.Tensor, batch_size: int = 8192) -> dict[str, float]:
    """Normalised MSE, L0, dead fraction and feature density over a full pass of x."""
    fired = torch.zeros(model.w_dec.shape[0], device=x.device)
    sq_err, active = 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        x_hat, indices, values = model(batch)
        sq_err += float((x_hat - batch).pow(2).sum())
        on = values > 0
        active += float(on.sum())
        fired.index_add_(0, indices[on], torch.ones(int(on.sum()), device=x.device))
    total_var = float((x - x.mean(dim=0)).pow(2).sum())
    density = fired / x.shape[0]
    alive = density[density > 0]
    return {
        "normalised_mse": sq_err / total_var,
        "l0": active / x.shape[0],
        "dead_fraction": float((density == 0).float().mean()),
        "mean_log10_density": float(alive.log10().mean()) if alive.numel() else float("-inf"),
    }


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """Scale gradients to a global norm of at most max_norm; untouched when already below
    (torch's version rescales every gradient on every step)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (float(norm) + 1e-6))


class Trainer:
    """Optimiser state and dead-latent bookkeeping around one TopKSAE."""

    def __init__(self, model: TopKSAE, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.model, self.cfg = model, cfg
        self.optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        self.dead_after = max(1, int(cfg.dead_after_epochs * steps_per_epoch))
        self.steps_since_fired = torch.zeros(cfg.n_latents, dtype=torch.long, device=model.w_dec.device)

    def dead(self) -> torch.Tensor:
        return self.steps_since_fired >= self.dead_after

    def step(self, batch: torch.Tensor) -> float:
        """One optimisation step; returns the batch's normalised MSE."""
        model, cfg = self.model, self.cfg
        indices, values, aux_indices, aux_values = model.encode_for_training(batch, self.dead(), cfg.aux_k_factor * cfg.k)
        x_hat = model.decode_sparse(indices, values)
        loss = normalised_mse(batch, x_hat)
        total = loss
        if aux_indices.shape[1]:  # AuxK: dead latents learn to explain what the live ones miss
            residual_hat = model.decode_sparse(aux_indices, aux_values, with_bias=False)
            total = loss + cfg.aux_coef * normalised_mse((batch - x_hat).detach(), residual_hat)
        self.optimiser.zero_grad(set_to_none=True)
        total.backward()
        model.project_decoder_grad()
        clip_grad_norm(model.parameters(), cfg.grad_clip)
        self.optimiser.step()
        model.normalise_decoder()
        self.steps_since_fired += 1
        self.steps_since_fired[indices[values > 0]] = 0
        return loss.item()


def new_trainer(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> Trainer:
    """A model initialised as in the paper (median pre-bias from a sample of x) with its trainer."""
    model = TopKSAE(x.shape[1], cfg.n_latents, cfg.k, coordinate_median(x, cfg.median_sample, generator)).to(x.device)
    return Trainer(model, cfg, steps_per_epoch=math.ceil(x.shape[0] / cfg.batch_size))


def train_sae(x_np: np.ndarray, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a top-k SAE on a float32 (rows, d) matrix."""
    if x_np.ndim != 2 or x_np.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 embeddings to train, got shape {x_np.shape}")
    if not np.isfinite(x_np).all():
        raise InvalidInputError("training embeddings contain NaN or infinite values")
    if not 0 < cfg.k <= cfg.n_latents:
        raise InvalidInputError(f"k must be in 1..n_latents ({cfg.n_latents}), got {cfg.k}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32)).to(device)
    trainer = new_trainer(x, cfg, generator)
    history: list[float] = []
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        epoch_loss = 0.0
        for start in range(0, x.shape[0], cfg.batch_size):
            batch = x[order[start : start + cfg.batch_size]]
            epoch_loss += trainer.step(batch) * batch.shape[0]
        history.append(epoch_loss / x.shape[0])
        if log:
            log(f"epoch {epoch + 1}/{cfg.epochs}: normalised MSE {history[-1]:.4f}, dead {float(trainer.dead().float().mean()):.1%}")
    metrics = evaluate(trainer.model, x)
    metrics.update(seconds=time.perf_counter() - started, samples=int(x.shape[0]), device=str(device))
    return TrainResult(model=trainer.model, metrics=metrics, history=history)


def load_training_matrix(backend: Backend, batch_size: int = 8192) -> np.ndarray:
    """All embeddings as one float32 matrix, read in batches."""
    backend.require_embedder()
    parts = [matrix for _, matrix in backend.iter_embeddings(batch_size)]
    if not parts:
        raise InvalidInputError("the database has no embeddings to train on: run `saedb load` first")
    return np.concatenate(parts)


def train_from_db(
    backend: Backend, cfg: TrainConfig, name: str, log: Callable[[str], None] | None = None
) -> tuple[int, TrainResult]:
    """Train on the database's embeddings and publish weights + codes as a new model version."""
    result = train_sae(load_training_matrix(backend), cfg, log)
    metrics = {**result.metrics, "config": cfg.as_dict(), "history": result.history}
    model_id = publish_model(backend, result.model.to_numpy(), name, metrics)
    return model_id, result
