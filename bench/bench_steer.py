"""The steered query vector on DuckDB: computed by SQL (`SELECT steer_toward_many($1, ...)`, the
path every steered search took) against in process from the same weight cache
(``saedb.search.steered_in_process``, issue 36), and a whole steered search by each path, in one
run; ratios against the SQL path. The corpus only matters for the whole search (exact here).

    python bench/bench_steer.py [--docs 5000] [--n 3072] [--k 32] [--repeats 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from saedb.backends import connect  # noqa: E402
from saedb.loaders import load_corpus  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE  # noqa: E402
from saedb.search import Steering, run_portable, search, steered_in_process  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SQL = "SELECT steer_toward_many($1::vector, $2::integer[], $3::double precision[], $4)"


def p50_ms(action, repeats: int) -> float:  # noqa: ANN001
    action()  # warm: caches filled
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=5000)
    parser.add_argument("--n", type=int, default=3072)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = str(Path(directory) / "steer.duckdb")
        with connect(path) as backend:
            load_corpus(backend, DATA / "hh_astro.jsonl.gz", "minilm", embeddings=DATA / "hh_astro_minilm.parquet",
                        limit=args.docs, progress=False)
            model_id = publish_model(backend, SAE.random(384, args.n, args.k, seed=0), "steer")
        with connect(path, read_only=True) as backend:  # as saedb serve and saedb search open it
            query = backend.fetch_vectors("SELECT embedding FROM embeddings LIMIT 1")[0]
            steps = [Steering("feature", f, 0.3, model_id) for f in (3, 7)]
            features, fractions = [3, 7], [0.3, 0.3]
            by_sql = p50_ms(lambda: run_portable(backend, SQL, [query, features, fractions, model_id]), args.repeats)
            in_process = p50_ms(lambda: steered_in_process(backend, query, steps), args.repeats)
            sql_vector = np.asarray(run_portable(backend, SQL, [query, features, fractions, model_id])[0][0], np.float32)
            assert np.array_equal(sql_vector, steered_in_process(backend, query, steps))
            whole = p50_ms(lambda: search(backend, query, 10, steps), args.repeats)
            plain = p50_ms(lambda: search(backend, query, 10), args.repeats)
    print(f"{args.docs} documents, SAE d=384 n={args.n} k={args.k}, p50 over {args.repeats} (read-only DuckDB, exact search)")
    print(f"steered vector by SQL         {by_sql:8.3f} ms  1.00x")
    print(f"steered vector in process     {in_process:8.3f} ms  {in_process / by_sql:.2f}x (the same vector, bit for bit)")
    print(f"steered search (in process)   {whole:8.3f} ms  {whole / plain:.2f}x plain search ({plain:.3f} ms)")


if __name__ == "__main__":
    main()
