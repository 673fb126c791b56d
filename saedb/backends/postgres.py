"""PostgreSQL + pgvector backend (server path). Bulk loads go through binary COPY."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from saedb.backends.base import Backend, DocumentBatch
from saedb.backends.pgcopy import binary_copy
from saedb.sae import SAE, SparseCodes

_PLACEHOLDER = re.compile(r"\?")


def _stack(vectors: list) -> np.ndarray:
    """pgvector values (Vector objects from binary cursors) as a float32 matrix."""
    return np.stack([v.to_numpy() for v in vectors]).astype(np.float32, copy=False)


def to_psycopg(sql: str) -> str:
    """Translate saedb's portable ``?`` placeholders to psycopg's ``%s``."""
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


class PostgresBackend(Backend):
    dialect = "postgres"
    schema_files = ("schema.sql", "functions.sql")

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("SET client_min_messages = warning")
        with self.conn.transaction():
            # Serialise concurrent first-time migrations of the same database.
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('saedb.migrate'))")
            self.migrate()
        register_vector(self.conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.conn.execute(to_psycopg(sql), list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(to_psycopg(sql), list(params)).fetchall()

    def run_script(self, sql: str) -> None:
        self.conn.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def close(self) -> None:
        self.conn.close()

    def vector_param(self, values: np.ndarray) -> Any:
        return np.asarray(values, dtype=np.float32)

    def fetch_vectors(self, sql: str, params: Sequence[Any] = ()) -> np.ndarray:
        with self.conn.cursor(binary=True) as cur:
            rows = cur.execute(to_psycopg(sql), list(params)).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return _stack([r[0] for r in rows])

    def _copy(self, table: str, columns: str, payload: bytes) -> None:
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(payload)

    def insert_documents(self, batch: DocumentBatch) -> int:
        with self.transaction(), self.conn.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS stage_docs (pos int, arxiv_id text, title text, abstract text, "
                "categories text[], subjects text[], published date, year int) ON COMMIT DELETE ROWS"
            )
            with cur.copy("COPY stage_docs FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "text", "text", "text", "text[]", "text[]", "date", "int4"])
                for pos, row in enumerate(
                    zip(batch.arxiv_ids, batch.titles, batch.abstracts, batch.categories, batch.subjects, batch.published, batch.years)
                ):
                    copy.write_row((pos, *row))
            added = cur.execute(
                "WITH added AS (INSERT INTO papers (arxiv_id, title, abstract, categories, subjects, published, year, corpus) "
                "SELECT arxiv_id, title, abstract, categories, subjects, published, year, %s FROM stage_docs ORDER BY pos "
                "ON CONFLICT (arxiv_id) DO NOTHING RETURNING doc_id, arxiv_id) "
                "SELECT a.doc_id, s.pos FROM added a JOIN stage_docs s USING (arxiv_id)",
                (batch.corpus,),
            ).fetchall()
            if added:
                doc_ids, positions = (np.array(col, dtype=np.int64) for col in zip(*added))
                payload = binary_copy([("int8", doc_ids), ("vector", batch.embeddings[positions])])
                self._copy("embeddings", "doc_id, embedding", payload)
        return len(added)

    def copy_weights(self, model_id: int, sae: SAE) -> None:
        features = np.arange(sae.n_latents, dtype=np.int32)
        model = np.full(sae.n_latents, model_id, dtype=np.int32)
        self._copy(
            "sae_encoder",
            "model_id, feature_id, w_enc, b_lat",
            binary_copy([("int4", model), ("int4", features), ("vector", sae.w_enc), ("float4", sae.b_lat)]),
        )
        self._copy(
            "sae_decoder",
            "model_id, feature_id, w_dec",
            binary_copy([("int4", model), ("int4", features), ("vector", sae.w_dec)]),
        )

    def copy_codes(self, model_id: int, doc_ids: np.ndarray, codes: SparseCodes) -> None:
        active = codes.active_mask()
        n = int(active.sum())
        payload = binary_copy(
            [
                ("int4", np.full(n, model_id, dtype=np.int32)),
                ("int8", np.repeat(doc_ids.astype(np.int64), active.sum(axis=1))),
                ("int4", codes.indices[active]),
                ("float4", codes.values[active]),
            ]
        )
        self._copy("sae_codes", "model_id, doc_id, feature_id, activation", payload)

    def iter_embeddings(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with self.transaction(), self.conn.cursor(name="saedb_embeddings", binary=True) as cur:
            cur.itersize = batch_size
            cur.execute("SELECT doc_id, embedding FROM embeddings ORDER BY doc_id")
            while rows := cur.fetchmany(batch_size):
                yield (
                    np.array([r[0] for r in rows], dtype=np.int64),
                    _stack([r[1] for r in rows]),
                )

    def create_embeddings_index(self) -> None:
        self.execute("CREATE INDEX IF NOT EXISTS embeddings_hnsw ON embeddings USING hnsw (embedding vector_cosine_ops)")
