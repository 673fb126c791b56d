"""Feature-analysis benchmark: co-occurrence counted by SQL on DuckDB (materialised in
feature_cooccurrence) vs scipy's sparse ZᵀZ in the same run (target: within 3x), on the
whole astro-ph corpus with a k=64, n=6144 model (trained once and cached)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import astro_duckdb, report  # noqa: E402
from saedb.backends import connect  # noqa: E402
from saedb.families import compute_cooccurrence, cooccurrence_graph, find_families  # noqa: E402
from saedb.trainer import TrainConfig  # noqa: E402
from saedb.trainer.train import train_from_db  # noqa: E402


def main() -> None:
    with connect(astro_duckdb()) as backend:
        model_id = backend.query("SELECT sae_model_id('bench-analysis')")[0][0]
        if model_id is None:
            model_id, _ = train_from_db(backend, TrainConfig(k=64, n_latents=6144, steps=200, lr=1e-3), "bench-analysis")
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
        families = find_families(*cooccurrence_graph(backend, model_id))
        families_s = time.perf_counter() - start
    report(f"co-occurrence, {pairs_sql:,} pairs: SQL vs scipy ZᵀZ (target within 3x)", sql_s / scipy_s, "x scipy", None,
           f"SQL {sql_s:.1f}s (materialised), scipy {scipy_s:.1f}s (read + product)")
    report(f"families from the co-occurrence table ({len(families)} found)", families_s, "s")


if __name__ == "__main__":
    main()
