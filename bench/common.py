"""Helpers shared by the benchmarks: timing, the real corpus loaded once into a DuckDB file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
ASTRO = ROOT.parent / "shared" / "data" / "hh_astro.jsonl.gz"
CACHE = ROOT / "bench" / ".cache"


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def astro_duckdb() -> str:
    """The whole astro-ph corpus embedded with the default embedder, cached between runs."""
    from saedb.backends import connect
    from saedb.embedders import get_embedder
    from saedb.loaders import load_corpus

    CACHE.mkdir(parents=True, exist_ok=True)
    path = str(CACHE / "astro.duckdb")
    with connect(path) as backend:
        load_corpus(backend, ASTRO, get_embedder(), batch_size=4096)  # resumes / no-op once complete
    return path


def ml_minilm() -> str:
    """hh_ml with its MiniLM vectors from ../shared/data (38,116 papers), cached between runs."""
    from saedb.backends import connect
    from saedb.loaders import load_corpus

    data = ROOT.parent / "shared" / "data"
    CACHE.mkdir(parents=True, exist_ok=True)
    path = str(CACHE / "ml_minilm.duckdb")
    with connect(path) as backend:
        load_corpus(backend, data / "hh_ml.jsonl.gz", "minilm", embeddings=data / "hh_ml_minilm.parquet", progress=False)
    return path


def report(name: str, value: float, unit: str, baseline: float | None = None, target: str = "") -> None:
    ratio = f"  ratio {value / baseline:.2f}" if baseline else ""
    print(f"{name:<58} {value:>12.2f} {unit:<10}{ratio}  {target}")


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a
    child inherits from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
