"""Training loop: normalised MSE + AuxK on dead latents, decoder-gradient projection,
gradient clipping, unit-norm decoder after every step (Gao et al. 2024, as used by
O'Neill et al. 2024), for a budget of optimiser steps (a new shuffle at each pass).

Memory: ``train_from_db`` holds the whole embedding matrix once (rows x d float32, e.g.
87k x 384 = 134 MB); codes are written back in 8192-row batches by ``publish_model``.
A run whose weights or metrics are not finite (a diverged run) is never published.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from saedb.errors import InvalidInputError, TrainingDivergedError
from saedb.trainer.config import TrainConfig
from saedb.trainer.topk_sae import TopKSAE, normalised_mse


if TYPE_CHECKING:  # the training loop itself needs torch only (it runs on GPU machines without the database drivers)
    from saedb.backends import Backend

LOG_EVERY = 500  # steps between progress lines
HISTORY_EVERY = 100  # steps averaged into one history point


@dataclass
class TrainResult:
    model: TopKSAE
    metrics: dict[str, float]
    history: list[float] = field(default_factory=list)  # mean training NMSE per HISTORY_EVERY steps
    holdout_history: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out NMSE) every LOG_EVERY steps

    def published_metrics(self, cfg: TrainConfig) -> dict:
        """What a model version records: the metrics, the config and both NMSE curves."""
        return {**self.metrics, "config": cfg.as_dict(), "history": self.history, "holdout_history": self.holdout_history}


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


@torch.no_grad()
def encoder_decoder_cosine(model: TopKSAE) -> float:
    """Mean cosine between each latent's encoder row and decoder row (1.0 at the tied init;
    the paper's SAE64: 0.57)."""
    return float(F.cosine_similarity(model.w_enc, model.w_dec, dim=1).mean())


def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """Scale gradients to a global norm of at most max_norm; untouched when already below
    (torch's version rescales every gradient on every step)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (float(norm) + 1e-6))


class Trainer:
    """Optimiser state and dead-latent bookkeeping around one TopKSAE."""

    def __init__(self, model: TopKSAE, cfg: TrainConfig) -> None:
        self.model, self.cfg = model, cfg
        self.optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        self.dead_after = cfg.dead_steps
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
    return Trainer(model, cfg)


def batches(n_rows: int, cfg: TrainConfig, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Row indices of ``cfg.steps`` batches: full batches of a fresh permutation per pass."""
    per_pass = max(1, n_rows // cfg.batch_size)
    for step in range(cfg.steps):
        if step % per_pass == 0:
            order = torch.randperm(n_rows, generator=generator)
        start = (step % per_pass) * cfg.batch_size
        yield order[start : start + cfg.batch_size]


def split_holdout(n_rows: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows); no hold-out when the fraction leaves fewer than 2 rows out."""
    order = torch.randperm(n_rows, generator=generator)
    held = int(n_rows * fraction)
    held = held if held >= 2 and n_rows - held >= 2 else 0
    return order[held:].sort().values, order[:held].sort().values


def train_sae(x_np: np.ndarray, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a top-k SAE on a float32 (rows, d) matrix for ``cfg.steps`` optimiser steps."""
    if x_np.ndim != 2 or x_np.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 embeddings to train, got shape {x_np.shape}")
    if not np.isfinite(x_np).all():
        raise InvalidInputError("training embeddings contain NaN or infinite values")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    train_rows, held_rows = split_holdout(x_all.shape[0], cfg.holdout_fraction, generator)
    x = x_all[train_rows].to(device)
    held = x_all[held_rows].to(device) if held_rows.numel() else None
    trainer = new_trainer(x, cfg, generator)
    history: list[float] = []
    holdout_history: list[tuple[int, float]] = []
    window = 0.0
    started = time.perf_counter()
    for step, rows in enumerate(batches(x.shape[0], cfg, generator), start=1):
        window += trainer.step(x[rows.to(device)])
        if step % HISTORY_EVERY == 0 or step == cfg.steps:
            history.append(window / (step - HISTORY_EVERY * (len(history))))
            window = 0.0
        if step % LOG_EVERY == 0 or step == cfg.steps:
            if held is not None:
                holdout_history.append((step, evaluate(trainer.model, held)["normalised_mse"]))
            if log:
                log(f"step {step}/{cfg.steps}: normalised MSE {history[-1]:.4f}"
                    + (f" (held out {holdout_history[-1][1]:.4f})" if holdout_history else "")
                    + f", dead {float(trainer.dead().float().mean()):.1%}")
    metrics: dict[str, float | str] = dict(evaluate(trainer.model, x))
    if holdout_history:
        metrics["holdout_normalised_mse"] = holdout_history[-1][1]
    metrics.update(
        steps=cfg.steps, enc_dec_cosine=encoder_decoder_cosine(trainer.model), seconds=time.perf_counter() - started,
        samples=int(x.shape[0]), holdout_samples=int(held_rows.numel()), device=str(device),
    )
    check_finite(trainer.model, metrics)
    return TrainResult(model=trainer.model, metrics=metrics, history=history, holdout_history=holdout_history)


def check_finite(model: TopKSAE, metrics: dict[str, float | str]) -> None:
    """A diverged run (NaN/Inf weights or reconstruction error) is an error, never a model."""
    finite_weights = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not finite_weights or not math.isfinite(float(metrics["normalised_mse"])):
        raise TrainingDivergedError(
            f"training diverged (normalised MSE {metrics['normalised_mse']}, finite weights: {finite_weights}); "
            "nothing was published. Lower the learning rate (--lr)."
        )


def load_training_matrix(backend: "Backend", batch_size: int = 8192) -> np.ndarray:
    """All embeddings as one float32 matrix, read in batches."""
    backend.require_embedder()
    parts = [matrix for _, matrix in backend.iter_embeddings(batch_size)]
    if not parts:
        raise InvalidInputError("the database has no embeddings to train on: run `saedb load` first")
    return np.concatenate(parts)


def train_from_db(
    backend: "Backend", cfg: TrainConfig, name: str, log: Callable[[str], None] | None = None
) -> tuple[int, TrainResult]:
    """Train on the database's embeddings and publish weights + codes as a new model version."""
    from saedb.models import publish_model

    backend.sync_documents()
    result = train_sae(load_training_matrix(backend), cfg, log)
    return publish_model(backend, result.model.to_numpy(), name, result.published_metrics(cfg)), result


def train_from_url(url: str, cfg: TrainConfig, name: str, log: Callable[[str], None] | None = None,
                   wait_s: float = 600, poll_s: float = 2) -> tuple[int, TrainResult]:
    """Train from a database URL holding it only while reading and while writing back: a
    DuckDB file stays readable by other processes (``saedb serve``) during training, and the
    write-back waits up to ``wait_s`` for them to let go. If it cannot, the model is saved as
    a sparsify folder beside the database (``saedb import`` publishes it), never lost."""
    from saedb.backends import connect, split_schema
    from saedb.errors import DatabaseBusyError
    from saedb.models import publish_model

    if split_schema(url)[1] is not None:  # an attached table: number its new rows first
        with connect(url) as writer:
            writer.sync_documents()
    with connect(url, read_only=True, statement_timeout_s=0) as reader:
        x = load_training_matrix(reader)
    result = train_sae(x, cfg, log)
    sae, metrics = result.model.to_numpy(), result.published_metrics(cfg)
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            with connect(url) as writer:
                return publish_model(writer, sae, name, metrics), result
        except DatabaseBusyError:
            if time.monotonic() > deadline:
                from saedb.interchange import export_sae

                saved = export_sae(sae, Path(url).with_name(f"{name}-unpublished"), "sparsify")
                raise DatabaseBusyError(
                    f"{url} stayed open in another process for {wait_s:.0f}s; the trained model is saved in {saved}: "
                    f"publish it with `saedb import {saved} --name {name}`") from None
            if log and not waiting:
                log("the database is open in another process (e.g. saedb serve): waiting to write the model back")
            waiting = True
            time.sleep(poll_s)
