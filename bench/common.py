"""Helpers shared by the benchmarks: timing, the real corpus loaded once into a DuckDB file."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ASTRO = DATA / "hh_astro.jsonl.gz"
# A bench's smoke run (tests/test_benches.py) sets both: the corpora it loads are then that many
# papers spread over each file (every n-th line), cached in a folder of the test's own.
CACHE = Path(os.environ.get("SAEDB_BENCH_CACHE") or ROOT / "bench" / ".cache")
LIMIT = int(os.environ.get("SAEDB_BENCH_LIMIT") or 0) or None


def corpus_file(path: Path) -> Path:
    """The corpus a bench loads: the whole file, or LIMIT papers spread over it."""
    from saedb.demo import spread_sample

    if LIMIT is None:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    return spread_sample(path, LIMIT, CACHE)


def cached(name: str) -> str:
    """A cached database's path, its name marked with LIMIT when set."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return str(CACHE / (f"{name}-{LIMIT}.duckdb" if LIMIT else f"{name}.duckdb"))


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

    path = cached("astro")
    with connect(path) as backend:
        load_corpus(backend, corpus_file(ASTRO), get_embedder(), batch_size=4096)  # resumes / no-op once complete
    return path


def ml_minilm() -> str:
    """hh_ml with its MiniLM vectors from ../shared/data (38,116 papers), cached between runs."""
    from saedb.backends import connect
    from saedb.loaders import load_corpus

    path = cached("ml_minilm")
    with connect(path) as backend:
        load_corpus(backend, corpus_file(DATA / "hh_ml.jsonl.gz"), "minilm", embeddings=DATA / "hh_ml_minilm.parquet", progress=False)
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
