"""Codes that follow the data on Postgres (issue 51), every figure against its baseline in the
same run:

1. A user's own table attached with ``saedb attach`` (``my_docs(doc_key, emb vector(384), year)``
   with an HNSW index): steered search p50 through saedb (the workspace's views) against the same
   steered query written by hand in pgvector on the table (target <= 1.5x), and each's recall
   against the other.
2. saedb's own ``embeddings`` with a published model: rows/s of a bulk UPDATE of vectors, a
   DELETE and an INSERT (10% of the rows each) with the codes kept in step (the statement-level
   triggers) against the same statement with the triggers disabled.

Vectors: hh_ml's MiniLM vectors repeated with Gaussian noise (sigma 0.02), renormalised.
    python bench/bench_follow.py [--docs 1000000] [--trigger-docs 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA  # noqa: E402
from saedb.attach import Attachment, attach_table  # noqa: E402
from saedb.backends import Backend, connect  # noqa: E402
from saedb.localpg import local_postgres  # noqa: E402
from saedb.models import publish_model  # noqa: E402
from saedb.sae import SAE  # noqa: E402
from saedb.search import Steering, search  # noqa: E402

K, N_LATENTS, QUERIES = 32, 3072, 100


def vectors(n: int, seed: int = 0) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(DATA / "hh_ml_minilm.parquet")
    real = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1)
    rng = np.random.default_rng(seed)
    out = real[np.arange(n) % len(real)] + rng.normal(0, 0.02, (n, real.shape[1])).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def copy_rows(conn, table: str, columns: str, rows) -> None:  # noqa: ANN001
    with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{v:.7g}" for v in vector) + "]"


def p50_ms(fn, items) -> float:  # noqa: ANN001
    for item in items[:5]:
        fn(item)
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def attached_search(server: str, n: int) -> None:
    import psycopg

    matrix = vectors(n)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE my_docs (doc_key text PRIMARY KEY, emb vector(384), year int)")
        copy_rows(conn, "my_docs", "doc_key, emb, year", ((f"d{i}", literal(v), 2000 + i % 20) for i, v in enumerate(matrix)))
        started = time.perf_counter()
        conn.execute("CREATE INDEX ON my_docs USING hnsw (emb vector_cosine_ops)")
        print(f"[{n}] my_docs: {n} rows, HNSW index built in {time.perf_counter() - started:.1f} s", flush=True)
        conn.execute("ANALYZE my_docs")
    with attach_table(server, "ws", Attachment("my_docs", "doc_key", "emb", year="year"), embedder="minilm") as backend:
        model_id = publish_model(backend, SAE.random(384, N_LATENTS, K, seed=1), "bench")
    url = f"{server}{'&' if '?' in server else '?'}schema=ws"
    rng = np.random.default_rng(1)
    work = [(matrix[i] + rng.normal(0, 0.05, 384).astype(np.float32), int(f)) for i, f in
            zip(rng.choice(n, QUERIES, replace=False), rng.integers(0, N_LATENTS, QUERIES))]
    with connect(url, read_only=True) as backend:
        through = lambda q: [h.arxiv_id for h in search(backend, q[0], 10, Steering("feature", q[1], 0.5, model_id))]  # noqa: E731
        by_hand = lambda q: [r[0] for r in backend.query(  # noqa: E731
            "SELECT doc_key FROM my_docs ORDER BY emb <=> (SELECT steer_toward(?::vector, ?, 0.5, ?)) LIMIT 10",
            (backend.vector_param(q[0]), q[1], model_id))]
        saedb_ms, hand_ms = p50_ms(through, work), p50_ms(by_hand, work)
        agree = np.mean([len(set(through(q)) & set(by_hand(q))) / 10 for q in work])
    print(f"[{n}] steered search p50: saedb through the workspace {saedb_ms:.2f} ms, by hand in pgvector {hand_ms:.2f} ms: "
          f"{saedb_ms / hand_ms:.2f}x (target <= 1.5x); the same hits: {agree:.3f}", flush=True)


def timed(backend: Backend, sql: str, params: tuple = ()) -> float:
    with backend.transaction():
        started = time.perf_counter()
        backend.execute(sql, params)
        return time.perf_counter() - started


def trigger_overhead(server: str, n: int) -> None:
    import psycopg

    with connect(server) as backend:
        backend.bind_embedder("minilm", 384)
        with psycopg.connect(server, autocommit=True) as conn:
            copy_rows(conn, "embeddings", "doc_id, embedding", ((i + 1, literal(v)) for i, v in enumerate(vectors(n))))
        model_id = publish_model(backend, SAE.random(384, N_LATENTS, K, seed=2), "bench")
        changed, share = n // 10, "doc_id % 10 = 0"
        triggers = {"update": "embeddings_codes_follow_updated", "delete": "embeddings_codes_follow_deleted", "insert": "embeddings_auto_encode"}
        backend.execute(f"CREATE TABLE kept AS SELECT * FROM embeddings WHERE {share}")
        statements = {"update": (f"UPDATE embeddings e SET embedding = o.embedding FROM embeddings o "
                                 f"WHERE o.doc_id = e.doc_id + 1 AND e.{share}",
                                 "UPDATE embeddings e SET embedding = k.embedding FROM kept k WHERE k.doc_id = e.doc_id"),
                      "delete": (f"DELETE FROM embeddings WHERE {share}", "INSERT INTO embeddings SELECT * FROM kept"),
                      "insert": ("INSERT INTO embeddings SELECT doc_id + 10000000, embedding FROM kept",
                                 "DELETE FROM embeddings WHERE doc_id > 10000000")}
        for name, (statement, undo) in statements.items():
            seconds = {}
            for maintained in (False, True):
                if not maintained:
                    backend.execute(f"ALTER TABLE embeddings DISABLE TRIGGER {triggers[name]}")
                seconds[maintained] = timed(backend, statement)
                backend.execute(f"ALTER TABLE embeddings ENABLE TRIGGER {triggers[name]}")
                backend.execute("ALTER TABLE embeddings DISABLE TRIGGER USER")  # back to the rows before, codes untouched
                backend.execute(undo)
                backend.execute("ALTER TABLE embeddings ENABLE TRIGGER USER")
            print(f"[{n}] {name} of {changed} rows: {changed / seconds[True]:,.0f} rows/s with codes kept in step, "
                  f"{changed / seconds[False]:,.0f} without: {seconds[True] / seconds[False]:.1f}x the time", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="rows of the attached table")
    parser.add_argument("--trigger-docs", type=int, default=100_000, help="rows of saedb's own embeddings table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, local_postgres(Path(folder) / "pg") as server:
        import psycopg

        with psycopg.connect(server, autocommit=True) as conn:
            for name in ("attached", "own"):
                conn.execute(f"CREATE DATABASE {name}")
        base = server.split("?")[0].rsplit("/", 1)[0]
        query = "?" + server.split("?")[1] if "?" in server else ""
        attached_search(f"{base}/attached{query}", args.docs)
        trigger_overhead(f"{base}/own{query}", args.trigger_docs)


if __name__ == "__main__":
    main()
