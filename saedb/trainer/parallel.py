"""Data-parallel training on torch.distributed: gloo on CPU, NCCL on GPU.

Rules (``saedb train --nproc N``, or one ``saedb train`` per rank under torchrun):
- every rank follows the same chunk schedule (the same seed) and reads only its share of each
  chunk: every N-th block, or, when a chunk has fewer blocks than ranks, the rows whose doc id
  modulo N is its rank; the held-out documents are the same hash as on one process;
- a step takes ``batch_size / N`` rows on each rank; gradients are averaged over the ranks
  (one all-reduce), so every rank applies the same update to the same weights (rank 0's
  initialisation is broadcast first), and a step of N ranks is one step of ``batch_size``;
- a latent has fired in a step when it fired on any rank; the logged loss is the ranks' mean;
- the final metrics are sums over every rank's rows; rank 0 alone logs and publishes, after
  every rank has finished: a rank that fails makes the others fail at their next collective,
  so nothing is published.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist

TIMEOUT_S = 1800  # a collective that waits longer than this fails the run (a rank hung)


@dataclass(frozen=True)
class Share:
    """Which part of each chunk one rank trains on."""

    rank: int = 0
    world: int = 1

    def blocks(self, blocks: np.ndarray) -> tuple[np.ndarray, bool]:
        """The chunk's blocks this rank reads, and whether it must still keep only its rows."""
        if self.world == 1:
            return blocks, False
        if len(blocks) >= self.world:
            return blocks[self.rank :: self.world], False
        return blocks, True

    def rows(self, doc_ids: np.ndarray) -> np.ndarray:
        return doc_ids % self.world == self.rank


class DataParallel:
    """The collectives of one rank of the default process group."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self.share = Share(rank, world)

    def broadcast_parameters(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for p in parameters:
            dist.broadcast(p.data, src=0)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def fired_and_loss(self, fired: torch.Tensor, loss: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Latents that fired on any rank, and the ranks' mean loss (one all-reduce)."""
        both = torch.cat([fired.to(loss.dtype), loss.detach().reshape(1)])
        dist.all_reduce(both)
        return both[:-1] > 0, float(both[-1]) / self.world

    def barrier(self) -> None:
        dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor


def init_process_group(rank: int, world: int, device: torch.device, address: str | None = None) -> DataParallel:
    """Join the group: at ``address`` (tcp://127.0.0.1:PORT) or from torchrun's environment."""
    from datetime import timedelta

    backend = "nccl" if device.type == "cuda" else "gloo"
    if address and address.startswith("tcp://127.0.0.1:"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback only
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=address or "env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=TIMEOUT_S))
    return DataParallel(rank, world)


def torchrun_rank() -> tuple[int, int] | None:
    """(rank, world) when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ["RANK"]), world) if world > 1 else None
