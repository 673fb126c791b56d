"""Data-parallel training (torch.distributed) against one process, same data, steps and batch.

hh_ml's 38,116 MiniLM vectors (../shared/data) in a DuckDB file; k=32, n=3072, batch 1024,
lr 1e-4 (the paper's), ``--steps`` steps (default 1,000); prints each run's wall time, optimiser
samples/s and held-out NMSE, with ratios against the single process. On a CPU machine the
ranks share its cores (each gets cores / N threads), so this measures the overhead of the
collectives more than a speed-up; on a machine with several GPUs each rank has its own.

    python bench/bench_parallel.py [--steps 1000] [--nproc 2]
"""

from __future__ import annotations

import argparse
import time

from common import ml_minilm, report

from saedb.trainer import TrainConfig
from saedb.trainer.train import train_from_url, train_in_processes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    url = ml_minilm()
    cfg = TrainConfig(k=32, n_latents=3072, batch_size=1024, lr=1e-4, steps=args.steps)
    started = time.perf_counter()
    _, one = train_from_url(url, cfg, "bench-one")
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    _, many = train_in_processes(url, cfg, f"bench-{args.nproc}", args.nproc)
    many_s = time.perf_counter() - started
    samples = cfg.steps * cfg.batch_size
    report("one process: wall (load, train, write-back)", one_s, "s")
    report(f"{args.nproc} processes: wall (spawn, load, train, write-back)", many_s, "s", one_s)
    report("one process: optimiser samples/s", samples / one.metrics["seconds"], "samples/s")
    report(f"{args.nproc} processes: optimiser samples/s", samples / many["seconds"], "samples/s", samples / one.metrics["seconds"])
    report("one process: held-out NMSE", one.metrics["holdout_normalised_mse"], "")
    report(f"{args.nproc} processes: held-out NMSE", many["holdout_normalised_mse"], "", one.metrics["holdout_normalised_mse"],
           "(target: within 5%)")


if __name__ == "__main__":
    main()
