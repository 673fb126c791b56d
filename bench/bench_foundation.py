"""Foundation benchmarks (issue: foundation). Each figure is printed with the baseline
measured in the same run:

1. Postgres load rows/s: saedb's staged binary COPY load path vs executemany INSERT.
2. DuckDB batch sae_encode over the whole astro-ph corpus vs raw numpy on the same matrix.
3. Postgres per-query sae_encode latency at n=6144, d=1536, vs in-process numpy.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import LIMIT, astro_duckdb, best_of, report  # noqa: E402
from saedb.backends import DocumentBatch, connect  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE  # noqa: E402


def random_documents(rows: int, dim: int, seed: int = 0, prefix: str = "bench") -> DocumentBatch:
    ids = [f"{prefix}-{i}" for i in range(rows)]
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return DocumentBatch(ids, ids, ids, [[]] * rows, [[]] * rows, [None] * rows, [None] * rows, "bench", vectors)


def bench_pg_load(server: str, rows: int = 50_000, dim: int = 384, batch: int = 10_000) -> None:
    """Vectors through saedb's binary COPY vs executemany INSERT, then the whole document load path."""
    docs = random_documents(rows, dim)
    with connect(fresh_database(server, "load_bench")) as backend:
        backend.bind_embedder("bench-random", dim)
        columns = {"doc_id": "int8", "embedding": "vector"}

        def copy_vectors() -> None:
            backend.execute("TRUNCATE embeddings")
            with backend.transaction():
                backend.copy_rows("embeddings", columns, zip(range(rows), docs.embeddings))

        def insert_vectors() -> None:
            backend.execute("TRUNCATE embeddings")
            with backend.transaction(), backend.conn.cursor() as cur:
                cur.executemany("INSERT INTO embeddings VALUES (%s, %s)", zip(range(rows // 5), docs.embeddings))

        copy_s, insert_s = best_of(copy_vectors, 2), best_of(insert_vectors, 1)
        report(f"pg binary COPY of {dim}-d vectors (target >= 60k/s)", rows / copy_s, "rows/s", rows / 5 / insert_s, "vs executemany INSERT")
        backend.execute("TRUNCATE embeddings")
        start = time.perf_counter()
        for s in range(0, rows, batch):
            backend.insert_documents(DocumentBatch(
                docs.arxiv_ids[s : s + batch], docs.titles[s : s + batch], docs.abstracts[s : s + batch],
                docs.categories[s : s + batch], docs.subjects[s : s + batch], docs.published[s : s + batch],
                docs.years[s : s + batch], "bench", docs.embeddings[s : s + batch],
            ))
        assert backend.count("embeddings") == backend.count("papers") == rows
    report(f"pg whole document load path (papers + {dim}-d embeddings)", rows / (time.perf_counter() - start), "docs/s")


def fresh_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    return server.replace("/postgres?", f"/{name}?")


def bench_duckdb_encode() -> None:
    path = astro_duckdb()
    with connect(path) as backend:
        _, dim = backend.require_embedder()
        sae = SAE.random(d=dim, n=6144, k=64, seed=0)
        x = np.concatenate([m for _, m in backend.iter_embeddings(8192)])
        # Register the weights without writing codes: a throwaway in-memory copy of the model table.
        model_id = backend.insert_model_row("bench-encode", sae, "bench", {})
        backend.copy_weights(model_id, sae)
        backend.execute("UPDATE sae_models SET status = 'ready' WHERE model_id = ?", (model_id,))
        try:
            sql = "SELECT sum(len(sae_encode(embedding, ?))) FROM embeddings"
            backend.query(sql, (model_id,))  # warm the weight cache
            in_sql = best_of(lambda: backend.query(sql, (model_id,)))
            in_numpy = best_of(lambda: [sae.encode(x[s : s + 2048]) for s in range(0, len(x), 2048)])
        finally:
            for table in ("sae_encoder", "sae_decoder", "sae_models"):
                backend.execute(f"DELETE FROM {table} WHERE model_id = ?", (model_id,))
    report(f"duckdb sae_encode, {len(x)} docs, n=6144 k=64 (target >= 0.9)", in_numpy / in_sql, "x numpy", None, f"{len(x) / in_sql:,.0f} docs/s in SQL vs {len(x) / in_numpy:,.0f} numpy")


def bench_pg_encode_latency(dsn: str, queries: int = 200) -> None:
    d, n, k = 1536, 6144, 64
    rng = np.random.default_rng(1)
    sae = SAE.random(d=d, n=n, k=k, seed=1)
    with connect(fresh_database(dsn, "latency_bench")) as backend:
        backend.bind_embedder("bench-random-1536", d)
        backend.insert_documents(random_documents(100, d, seed=1))
        model_id = publish_model(backend, sae, "bench-latency")
        backend.execute("VACUUM ANALYZE sae_encoder")
        x = rng.standard_normal((queries, d)).astype(np.float32)
        sql = "SELECT sae_encode(?, ?)"
        for v in x[:20]:
            backend.query(sql, (v, model_id))
        start = time.perf_counter()
        for v in x:
            backend.query(sql, (v, model_id))
        per_query = (time.perf_counter() - start) / queries * 1000
        start = time.perf_counter()
        for v in x:
            sae.encode(v)
        numpy_ms = (time.perf_counter() - start) / queries * 1000
    report(f"pg sae_encode per query, n={n} d={d} (target <= 15 ms)", per_query, "ms", None, f"numpy in-process {numpy_ms:.2f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, local_postgres(Path(tmp) / "pg") as dsn:
        bench_pg_load(dsn, rows=LIMIT or 50_000, batch=min(10_000, LIMIT or 10_000))
        bench_pg_encode_latency(dsn)
    bench_duckdb_encode()


if __name__ == "__main__":
    main()
