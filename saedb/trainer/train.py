"""Training loop: normalised MSE + AuxK on dead latents, decoder-gradient projection,
gradient clipping, unit-norm decoder after every step (Gao et al. 2024, as used by
O'Neill et al. 2024), for a budget of optimiser steps (a new shuffle at each pass).

Memory: the trainer reads the database's embeddings in chunks of ``chunk_rows`` rows
(``saedb.trainer.stream``): a corpus that fits in one chunk (87k x 384 float32 = 134 MB
at the default 131,072 rows) is read once, a larger one is streamed pass after pass, so
memory is bounded by the chunk, not the corpus. Codes are written back in 8192-row
batches by ``publish_model``.
A run whose weights or metrics are not finite (a diverged run) is never published.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from saedb.errors import DatabaseBusyError, InvalidInputError, TrainingDivergedError, TrainingFailedError
from saedb.ports import free_port
from saedb.trainer.config import TrainConfig
from saedb.trainer.parallel import DataParallel, Share, init_process_group
from saedb.trainer.stream import ArraySource, ChunkedRows, DatabaseSource, EmbeddingSource, training_batches
from saedb.trainer.topk_sae import TopKSAE, normalised_mse


if TYPE_CHECKING:  # the training loop itself needs torch only (it runs on GPU machines without the database drivers)
    from saedb.backends import Backend

LOG_EVERY = 500  # steps between progress lines (each with the time left)
FIRST_ESTIMATE_AT = 50  # the step of the first estimate of the time left
HISTORY_EVERY = 100  # steps averaged into one history point
HOLDOUT_MONITOR_ROWS = 16_384  # held-out rows (from the first chunk) scored every LOG_EVERY steps


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


class ReconstructionStats:
    """Normalised MSE, L0, dead fraction and feature density, accumulated batch by batch
    (the variance from float64 sums, so a pass in chunks equals a pass over the whole)."""

    def __init__(self, n_latents: int) -> None:
        self.fired = torch.zeros(n_latents, dtype=torch.float64)
        self.rows, self.sq_err, self.active = 0, 0.0, 0.0
        self.sum: torch.Tensor | None = None
        self.sum_sq = 0.0

    @torch.no_grad()
    def add(self, model: TopKSAE, x: torch.Tensor, batch_size: int = 8192) -> None:
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size]
            x_hat, indices, values = model(batch)
            self.sq_err += float((x_hat - batch).double().pow(2).sum())
            on = values > 0
            self.active += float(on.sum())
            self.fired.index_add_(0, indices[on].cpu(), torch.ones(int(on.sum()), dtype=torch.float64))
            batch64 = batch.double()
            self.sum = batch64.sum(dim=0).cpu() + (self.sum if self.sum is not None else 0)
            self.sum_sq += float(batch64.pow(2).sum())
            self.rows += batch.shape[0]

    def combine(self, parallel: DataParallel, d_in: int) -> "ReconstructionStats":
        """The sums over every rank's rows (each rank calls it; all get the totals)."""
        scalars = torch.tensor([self.rows, self.sq_err, self.active, self.sum_sq], dtype=torch.float64)
        sums = self.sum if self.sum is not None else torch.zeros(d_in, dtype=torch.float64)
        packed = parallel.sum_(torch.cat([scalars, sums, self.fired]))
        self.rows, (self.sq_err, self.active, self.sum_sq) = int(packed[0]), map(float, packed[1:4])
        self.sum, self.fired = packed[4 : 4 + d_in], packed[4 + d_in :]
        return self

    def metrics(self) -> dict[str, float]:
        assert self.sum is not None, "no rows were evaluated"
        total_var = self.sum_sq - float(self.sum.pow(2).sum()) / self.rows
        density = self.fired / self.rows
        alive = density[density > 0]
        return {
            "normalised_mse": self.sq_err / total_var,
            "l0": self.active / self.rows,
            "dead_fraction": float((density == 0).double().mean()),
            "mean_log10_density": float(alive.log10().mean()) if alive.numel() else float("-inf"),
        }


def evaluate(model: TopKSAE, x: torch.Tensor) -> dict[str, float]:
    """Reconstruction metrics over all rows of x."""
    stats = ReconstructionStats(model.w_dec.shape[0])
    stats.add(model, x)
    return stats.metrics()


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

    def __init__(self, model: TopKSAE, cfg: TrainConfig, parallel: DataParallel | None = None) -> None:
        self.model, self.cfg, self.parallel = model, cfg, parallel
        if parallel is not None:
            parallel.broadcast_parameters(model.parameters())  # every rank starts from rank 0's weights
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
        if self.parallel is not None:
            self.parallel.average_gradients(model.parameters())
        model.project_decoder_grad()
        clip_grad_norm(model.parameters(), cfg.grad_clip)
        self.optimiser.step()
        model.normalise_decoder()
        self.steps_since_fired += 1
        if self.parallel is None:
            self.steps_since_fired[indices[values > 0]] = 0
            return loss.item()
        fired = torch.zeros_like(self.steps_since_fired, dtype=torch.bool)
        fired[indices[values > 0]] = True
        fired, mean_loss = self.parallel.fired_and_loss(fired, loss)
        self.steps_since_fired[fired] = 0
        return mean_loss


def new_trainer(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator, parallel: DataParallel | None = None) -> Trainer:
    """A model initialised as in the paper (pre-bias the coordinate median of a sample of x's
    rows, W_enc = W_decᵀ) with its trainer; W_enc scaled to ``cfg.encoder_scale_factor`` times
    the scale that fits that sample unless ``cfg.fit_encoder_scale`` is off (``TopKSAE.fit_encoder_scale``)."""
    sample = x[torch.randperm(x.shape[0], generator=generator)[: cfg.median_sample]]
    model = TopKSAE(x.shape[1], cfg.n_latents, cfg.k, sample.median(dim=0).values).to(x.device)
    if cfg.fit_encoder_scale:
        model.fit_encoder_scale(sample, cfg.encoder_scale_factor)
    return Trainer(model, cfg, parallel)


def train_sae(x_np: np.ndarray, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a top-k SAE on a float32 (rows, d) matrix for ``cfg.steps`` optimiser steps."""
    if x_np.ndim != 2 or x_np.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 embeddings to train, got shape {x_np.shape}")
    return train_stream(ArraySource(np.ascontiguousarray(x_np, dtype=np.float32)), cfg, log)


def eta(elapsed_s: float, step: int, steps: int) -> str:
    """'about 12 min left' from the pace so far."""
    left = elapsed_s / step * (steps - step)
    return f"about {left / 60:.0f} min left" if left >= 90 else f"about {left:.0f} s left"


def train_stream(source: EmbeddingSource, cfg: TrainConfig, log: Callable[[str], None] | None = None,
                 parallel: DataParallel | None = None) -> TrainResult:
    """Train a top-k SAE on the rows of ``source``, holding at most one chunk of
    ``cfg.chunk_rows`` rows (plus one batch) in memory; see ``saedb.trainer.stream``. With
    ``parallel``, this process is one rank of a data-parallel run (``saedb.trainer.parallel``)."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    world = parallel.world if parallel is not None else 1
    if cfg.batch_size % world:
        raise InvalidInputError(f"the batch size ({cfg.batch_size}) must be a multiple of the number of processes ({world})")
    rows = ChunkedRows(source, cfg.chunk_rows, cfg.holdout_fraction, cfg.seed, parallel.share if parallel else Share())
    trainer, monitor = start_from_first_chunk(rows, cfg, generator, device, parallel)
    history: list[float] = []
    holdout_history: list[tuple[int, float]] = []
    window = 0.0
    started = time.perf_counter()
    for step, batch in zip(range(1, cfg.steps + 1), training_batches(rows, cfg.batch_size // world, generator)):
        window += trainer.step(batch.to(device))
        if step % HISTORY_EVERY == 0 or step == cfg.steps:
            history.append(window / (step - HISTORY_EVERY * (len(history))))
            window = 0.0
        if log and step == FIRST_ESTIMATE_AT < cfg.steps:  # how long, before the first progress line
            log(f"step {step}/{cfg.steps}: {eta(time.perf_counter() - started, step, cfg.steps)}")
        if step % LOG_EVERY == 0 or step == cfg.steps:
            if monitor is not None:
                holdout_history.append((step, evaluate(trainer.model, monitor)["normalised_mse"]))
            if log:
                log(f"step {step}/{cfg.steps}: normalised MSE {history[-1]:.4f}"
                    + (f" (held out {holdout_history[-1][1]:.4f})" if holdout_history else "")
                    + f", dead {float(trainer.dead().float().mean()):.1%}"
                    + (f", {eta(time.perf_counter() - started, step, cfg.steps)}" if step < cfg.steps else ""))
    seconds = time.perf_counter() - started
    seen, unseen = final_pass(trainer.model, rows, device)
    if parallel is not None:
        d_in = int(trainer.model.w_dec.shape[1])
        seen, unseen = seen.combine(parallel, d_in), unseen.combine(parallel, d_in)
    metrics: dict[str, float | str] = dict(seen.metrics())
    if unseen.rows >= 2:
        metrics["holdout_normalised_mse"] = unseen.metrics()["normalised_mse"]
    metrics.update(
        steps=cfg.steps, enc_dec_cosine=encoder_decoder_cosine(trainer.model), seconds=seconds,
        samples=seen.rows, holdout_samples=unseen.rows, device=str(device),
    )
    check_finite(trainer.model, metrics)
    return TrainResult(model=trainer.model, metrics=metrics, history=history, holdout_history=holdout_history)


def start_from_first_chunk(rows: ChunkedRows, cfg: TrainConfig, generator: torch.Generator, device: torch.device,
                           parallel: DataParallel | None = None) -> tuple[Trainer, torch.Tensor | None]:
    """The trainer (pre-bias from the first chunk's training rows) and the held-out rows of
    that chunk scored during training (at most HOLDOUT_MONITOR_ROWS); the chunk is not kept."""
    first = next(rows.chunks())
    if first.training.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 embeddings to train, got {first.training.shape[0]} in the first chunk")
    monitor = torch.from_numpy(first.held[:HOLDOUT_MONITOR_ROWS].copy()).to(device) if first.held.shape[0] >= 2 else None
    return new_trainer(torch.from_numpy(first.training).to(device), cfg, generator, parallel), monitor


def final_pass(model: TopKSAE, rows: ChunkedRows, device: torch.device) -> tuple[ReconstructionStats, ReconstructionStats]:
    """Metrics over every training row and every held-out row, one chunk at a time."""
    seen, unseen = ReconstructionStats(model.w_dec.shape[0]), ReconstructionStats(model.w_dec.shape[0])
    for chunk in rows.chunks(shuffled=False):
        if chunk.training.shape[0]:
            seen.add(model, torch.from_numpy(chunk.training).to(device))
        if chunk.held.shape[0]:
            unseen.add(model, torch.from_numpy(chunk.held).to(device))
        del chunk  # let it go before the next one is read
    return seen, unseen


def check_finite(model: TopKSAE, metrics: dict[str, float | str]) -> None:
    """A diverged run (NaN/Inf weights or reconstruction error) is an error, never a model."""
    finite_weights = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not finite_weights or not math.isfinite(float(metrics["normalised_mse"])):
        raise TrainingDivergedError(
            f"training diverged (normalised MSE {metrics['normalised_mse']}, finite weights: {finite_weights}); "
            "nothing was published. Lower the learning rate (--lr)."
        )


def load_training_matrix(backend: "Backend", batch_size: int = 8192) -> np.ndarray:
    """All embeddings as one float32 matrix, read in batches (the scaling grid trains many
    models on one small corpus; ``train_from_db`` streams instead)."""
    backend.require_embedder()
    parts = [matrix for _, matrix in backend.iter_embeddings(batch_size)]
    if not parts:
        raise InvalidInputError("the database has no embeddings to train on: run `saedb load` first")
    return np.concatenate(parts)


def database_source(open_reader: Callable[[], AbstractContextManager["Backend"]]) -> DatabaseSource:
    source = DatabaseSource(open_reader)
    if not source.count:
        raise InvalidInputError("the database has no embeddings to train on: run `saedb load` first")
    return source


def report_skipped(skipped: list[tuple[str | None, str]], log: Callable[[str], None] | None) -> None:
    if skipped and log:
        from saedb.attach import describe_skipped

        log(describe_skipped(skipped))


def train_from_db(
    backend: "Backend", cfg: TrainConfig, name: str, log: Callable[[str], None] | None = None
) -> tuple[int, TrainResult]:
    """Train on the database's embeddings and publish weights + codes as a new model version."""
    from saedb.models import publish_model

    report_skipped(backend.sync_documents(), log)
    result = train_stream(database_source(lambda: nullcontext(backend)), cfg, log)
    return publish_model(backend, result.model.to_numpy(), name, result.published_metrics(cfg)), result


def untrained_model(source: EmbeddingSource, cfg: TrainConfig) -> TopKSAE:
    """The model ``train_stream`` would start from (same seed, same first chunk), before any step."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = ChunkedRows(source, cfg.chunk_rows, cfg.holdout_fraction, cfg.seed)
    return start_from_first_chunk(rows, cfg, generator, pick_device(cfg.device))[0].model


def publish_untrained(backend: "Backend", model_id: int) -> int:
    """The untrained control of a published model: its trainer's initialisation (the model's own
    config and seed, zero optimiser steps; k and size alone for a model saedb did not train),
    published once as ``<name>-untrained`` with ``control_of`` set and the same held-out split;
    returns its model id (the existing one when already published)."""
    from saedb.models import publish_model

    existing = backend.query("SELECT max(model_id) FROM sae_models WHERE control_of = ? AND status = 'ready'", (model_id,))[0][0]
    if existing is not None:
        return int(existing)
    info = backend.model_row(model_id)
    if info["metrics"] and info["metrics"].get("control_of") is not None:
        raise InvalidInputError(f"model {model_id} is itself an untrained control")
    known = {f.name for f in fields(TrainConfig)}
    config = {key: value for key, value in ((info["metrics"] or {}).get("config") or {}).items() if key in known}
    cfg = TrainConfig(**{**config, "k": info["k"], "n_latents": info["n_latents"], "device": "cpu",
                         "holdout_fraction": config.get("holdout_fraction", 0.0)})
    model = untrained_model(database_source(lambda: nullcontext(backend)), cfg)
    metrics = {"config": cfg.as_dict(), "steps": 0, "control_of": model_id}
    return publish_model(backend, model.to_numpy(), f"{info['name']}-untrained", metrics)


def connect_when_free(url: str, wait_s: float, poll_s: float, log: Callable[[str], None] | None,
                      **options: Any) -> "Backend":
    """``connect(url, **options)``, retrying while another process holds the DuckDB file in a
    way that excludes this one, up to ``wait_s`` (then DatabaseBusyError)."""
    from saedb.backends import connect

    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            return connect(url, **options)
        except DatabaseBusyError:
            if time.monotonic() > deadline:
                raise
            if log and not waiting:
                log("the database is open in another process (e.g. saedb serve, saedb load): waiting for it")
            waiting = True
            time.sleep(poll_s)


def train_from_url(url: str, cfg: TrainConfig, name: str, log: Callable[[str], None] | None = None,
                   wait_s: float = 600, poll_s: float = 2, parallel: DataParallel | None = None) -> tuple[int | None, TrainResult]:
    """Train from a database URL holding it only while reading a chunk and while writing back:
    a DuckDB file stays usable by other processes (``saedb serve``, ``saedb load``) during
    training, and each read or the write-back waits up to ``wait_s`` for them to let go (a
    running ``saedb serve`` is asked to, see ``saedb.backends.handoff``). If
    the write-back cannot, the model is saved as a sparsify folder beside the database
    (``saedb import`` publishes it), never lost. As one rank of a data-parallel run, only rank 0
    numbers an attached table's rows and publishes (the others return None as the model id)."""
    from saedb.backends import split_schema
    from saedb.backends.handoff import requesting_write
    from saedb.models import publish_model

    lead = parallel is None or parallel.rank == 0
    if split_schema(url)[1] is not None and lead:  # an attached table: number its new rows first
        with requesting_write(url), connect_when_free(url, wait_s, poll_s, log) as writer:
            report_skipped(writer.sync_documents(), log)
    if parallel is not None:
        parallel.barrier()
    source = database_source(lambda: connect_when_free(url, wait_s, poll_s, log, read_only=True, statement_timeout_s=0))
    result = train_stream(source, cfg, log, parallel)
    if not lead:
        return None, result
    sae, metrics = result.model.to_numpy(), result.published_metrics(cfg)
    try:
        with requesting_write(url), connect_when_free(url, wait_s, poll_s, log) as writer:  # a serving process lets go
            return publish_model(writer, sae, name, metrics), result
    except DatabaseBusyError:
        from saedb.interchange import export_sae

        saved = export_sae(sae, Path(url).with_name(f"{name}-unpublished"), "sparsify")
        raise DatabaseBusyError(
            f"{url} stayed open in another process for {wait_s:.0f}s; the trained model is saved in {saved}: "
            f"publish it with `saedb import {saved} --name {name}`") from None


def train_in_processes(url: str, cfg: TrainConfig, name: str, nproc: int,
                       log: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """``train_from_url`` as ``nproc`` data-parallel ranks in spawned processes (gloo on CPU,
    NCCL on GPU, over 127.0.0.1); (model id, metrics) of the version rank 0 published. A rank
    that fails ends the run with TrainingFailedError naming it, and nothing is published."""
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    address = f"tcp://127.0.0.1:{free_port()}"
    try:
        mp.start_processes(_rank_main, args=(nproc, address, url, cfg, name, log is not None, results), nprocs=nproc,
                           start_method="spawn")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        # Every failed rank reported before it exited. A rank that lost a peer fails too, and
        # may be the one torch noticed first: name the rank whose own error ended the run.
        failures = []
        while not results.empty():
            outcome = results.get()
            if outcome[0] == "failed":
                failures.append(outcome[1:])
        rank, error = next(((r, e) for r, e, lost_peer in failures if not lost_peer), (exc.error_index, str(exc).strip()))
        raise TrainingFailedError(f"rank {rank} of {nproc} failed, nothing was published: {error}") from None
    return results.get()[1:]


def _rank_main(rank: int, world: int, address: str, url: str, cfg: TrainConfig, name: str, verbose: bool,
               results: Any) -> None:
    parallel = init_process_group(rank, world, pick_device(cfg.device), address)
    try:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))  # the ranks share the machine's cores
        model_id, result = train_from_url(url, cfg, name, log=(lambda line: print(line, flush=True)) if verbose and rank == 0 else None,
                                          parallel=parallel)
        if rank == 0:
            results.put(("published", model_id, result.metrics))
    except Exception as exc:
        results.put(("failed", rank, str(exc), isinstance(exc, torch.distributed.DistError)))  # before this rank exits
        raise
    finally:
        torch.distributed.destroy_process_group()
