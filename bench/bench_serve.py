"""The web app under load: 200 parallel steered searches on both backends, errors and
p50/p99 latency, against one client's latency measured in the same run.

    python bench/bench_serve.py [--docs 5000] [--parallel 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ASTRO, report  # noqa: E402
from saedb.app.server import App, make_server  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.embedders import get_embedder  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.trainer import TrainConfig  # noqa: E402
from saedb.trainer.train import train_from_db  # noqa: E402

QUERIES = ["dark matter halos", "exoplanet atmospheres", "gamma-ray bursts", "galaxy clusters", "neutron star mergers"]


def timed_search(base: str, model_id: int, i: int) -> tuple[float, int]:
    params = urllib.parse.urlencode([("q", QUERIES[i % len(QUERIES)]), ("model", model_id), ("f", f"{i % 64}:0.5")])
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{base}/api/search?{params}", timeout=120) as response:
            json.loads(response.read())
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        status = getattr(exc, "code", 0)
    return time.perf_counter() - start, status


def run(name: str, url: str, docs: int, parallel: int, steps: int) -> None:
    with connect(url) as backend:
        load_corpus(backend, ASTRO, get_embedder(), limit=docs, batch_size=2048, progress=False)
        model_id, _ = train_from_db(backend, TrainConfig(k=32, n_latents=1024, steps=steps, batch_size=256, lr=1e-3), "bench-serve")
    app = App(url, pool_size=8, timeout_s=60)
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        single = [timed_search(base, model_id, i)[0] for i in range(20)]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            results = list(pool.map(lambda i: timed_search(base, model_id, i), range(parallel)))
    finally:
        server.shutdown()
        server.server_close()
        app.pool.close()
    latencies = np.array([t for t, _ in results])
    errors = sum(status != 200 for _, status in results)
    base_p50 = float(np.median(single)) * 1000
    report(f"{name}: one client, p50", base_p50, "ms")
    report(f"{name}: {parallel} parallel searches, p50", float(np.median(latencies)) * 1000, "ms", base_p50)
    report(f"{name}: {parallel} parallel searches, p99", float(np.percentile(latencies, 99)) * 1000, "ms", base_p50)
    report(f"{name}: {parallel} parallel searches, errors", errors, "requests", target="target: 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--parallel", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the model searched with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="saedb-bench-") as directory:
        os.chmod(directory, 0o755)
        run("DuckDB", str(Path(directory) / "serve.duckdb"), args.docs, args.parallel, args.steps)
        with local_postgres(Path(directory) / "pg") as dsn:
            run("Postgres", dsn, args.docs, args.parallel, args.steps)


if __name__ == "__main__":
    main()
