"""Feature-analysis benchmark: co-occurrence counted by SQL on DuckDB (materialised in
feature_cooccurrence) vs scipy's sparse ZᵀZ in the same run (target: within 3x), on the
whole astro-ph corpus with a k=64, n=6144 model (trained once and cached). ``--db`` and the
sizes make a smoke run of it (tests/test_benches.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import astro_duckdb, report  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.errors import UnknownModelError  # noqa: E402
from saedb.families import compute_cooccurrence, cooccurrence_counts, find_families  # noqa: E402
from saedb.models import resolve_model  # noqa: E402
from saedb.trainer import TrainConfig  # noqa: E402
from saedb.trainer.train import train_from_db  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="a saedb DuckDB file (default: the whole astro-ph corpus, loaded once and cached)")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--n", type=int, default=6144)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with connect(args.db or astro_duckdb()) as backend:
        name = f"bench-analysis-k{args.k}-n{args.n}"
        try:
            model_id = resolve_model(backend, name)
        except UnknownModelError:  # the first run on this file trains it
            model_id, _ = train_from_db(backend, TrainConfig(k=args.k, n_latents=args.n, steps=args.steps, lr=1e-3), name)
        n_codes = backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0]
        print(f"model {model_id}: {n_codes:,} codes")

        start = time.perf_counter()
        columns = backend.con.sql(f"SELECT doc_id, feature_id FROM sae_codes WHERE model_id = {int(model_id)}").fetchnumpy()
        z = sp.csr_matrix((np.ones(len(columns["doc_id"]), np.float32), (columns["doc_id"], columns["feature_id"])))
        pairs_scipy = sp.triu(z.T @ z).nnz
        scipy_s = time.perf_counter() - start

        start = time.perf_counter()
        pairs_sql = compute_cooccurrence(backend, model_id)
        sql_s = time.perf_counter() - start
        assert pairs_sql == pairs_scipy, (pairs_sql, pairs_scipy)

        start = time.perf_counter()
        features = [r[0] for r in backend.query("SELECT DISTINCT feature_id FROM sae_codes WHERE model_id = ? ORDER BY 1",
                                                (model_id,))]  # every feature that fires: no labels needed
        families = find_families(cooccurrence_counts(backend, model_id, features), features)
        families_s = time.perf_counter() - start
    report(f"co-occurrence, {pairs_sql:,} pairs: SQL vs scipy ZᵀZ (target within 3x)", sql_s / scipy_s, "x scipy", None,
           f"SQL {sql_s:.1f}s (materialised), scipy {scipy_s:.1f}s (read + product)")
    report(f"families from the co-occurrence table ({len(families)} found)", families_s, "s")


if __name__ == "__main__":
    main()
