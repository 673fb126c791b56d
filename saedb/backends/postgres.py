"""PostgreSQL + pgvector backend (server path). Bulk loads go through binary COPY
(psycopg's C row writer with pgvector's binary dumper: 80-100k 384-d vectors/s, see bench/)."""

from __future__ import annotations

import itertools
import math
import re
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import psycopg
from pgvector import Vector
from pgvector.psycopg import register_vector

from saedb.backends.base import Backend, DocumentBatch
from saedb.sae import SAE, SparseCodes

# Left as they are: quoted literals and identifiers, dollar-quoted strings and comments.
_SQL_TOKENS = re.compile(
    r"""(?P<skip>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)"""
    r"|(?P<operator>\?\?|\?[|&])|(?P<mark>\?)|(?P<percent>%)",
    re.S,
)
STAGE_COLUMNS = {
    "doc_id": "int8", "pos": "int4", "arxiv_id": "text", "title": "text", "abstract": "text",
    "categories": "text[]", "subjects": "text[]", "published": "date", "year": "int4",
}


def _stack(vectors: list) -> np.ndarray:
    """pgvector values (Vector objects from binary cursors) as a float32 matrix."""
    return np.stack([v.to_numpy() for v in vectors]).astype(np.float32, copy=False)


def _psycopg_token(match: re.Match) -> str:
    if match["skip"]:
        return match["skip"].replace("%", "%%")
    if match["operator"]:
        return "?" if match["operator"] == "??" else match["operator"]
    return "%s" if match["mark"] else "%%"


def _plain_value(value: Any) -> Any:
    """pgvector values (Vector objects, numpy arrays) as lists of floats for Arrow."""
    if isinstance(value, Vector):
        return value.to_list()
    return value.tolist() if isinstance(value, np.ndarray) else value


def to_psycopg(sql: str, params: Sequence[Any]) -> tuple[str, list[Any] | None]:
    """Translate saedb's portable ``?`` placeholders to psycopg's ``%s``. A ``?`` inside a literal,
    a quoted identifier or a comment stays; so does the jsonb operator ``?|``/``?&``, and ``??``
    (as in JDBC) is the jsonb ``?`` operator. Without parameters the SQL is sent unchanged."""
    if not params:
        return sql, None
    return _SQL_TOKENS.sub(_psycopg_token, sql), list(params)


# HNSW search settings of every session (bench/bench_search.py, 87k astro-ph documents, index
# built with pgvector's defaults m=16, ef_construction=64): recall@10 of plain / steered queries
# against exact search is 0.91 / 0.90 at pgvector's default ef_search 40 on 256-d wordllama
# vectors (0.95 / 0.94 on MiniLM), 0.96 / 0.96 at 100 (MiniLM 0.98 / 0.96-0.97) and 0.98 / 0.98
# at 200 (MiniLM 0.99 / 0.99), for 1-2 ms more per query (p50 2.7-6.7 ms, p99 under 13 ms).
# 200 keeps a margin above 0.95 on the default embedder. At 1M documents (bench_search's
# synthetic MiniLM corpus) 200 still gives 1.000 / 0.982 (40: 0.972 / 0.892) at p50 17-19 ms. Iterative scans keep filtered
# searches (WHERE year >= ...) from returning fewer than LIMIT rows. schema.sql sets the same
# for every session of the database (ALTER DATABASE), where saedb's role owns it.
# Building the HNSW index: pgvector's in-memory graph holds each vector (4 bytes per dimension),
# its level-0 neighbour list (2m items of 8 bytes) and a header; twice that leaves a margin.
# bench_search.py at 1M reports whether pgvector still said the graph no longer fits.
HNSW_BUILD_MEMORY_MB = 4096

SEARCH_SETTINGS = ("SET hnsw.ef_search = 200", "SET hnsw.iterative_scan = relaxed_order")


def configure_search(conn: psycopg.Connection) -> None:
    for statement in SEARCH_SETTINGS:
        conn.execute(statement)


def configure_reader(conn: psycopg.Connection, statement_timeout_ms: int) -> None:
    """A read-only session with a statement timeout, the search settings and the vector type (autocommit connection)."""
    configure_search(conn)
    conn.execute("SET client_min_messages = warning")
    conn.execute("SET default_transaction_read_only = on")
    conn.execute(f"SET statement_timeout = {int(statement_timeout_ms)}")
    register_vector(conn)


class PostgresBackend(Backend):
    dialect = "postgres"
    schema_files = ("schema.sql", "functions.sql", "views.sql", "analytics.sql")
    model_tables = (*Backend.model_tables, "sae_codes")

    def __init__(self, dsn: str, read_only: bool = False, statement_timeout_ms: int = 10_000,
                 conn: psycopg.Connection | None = None) -> None:
        """Connect to ``dsn``, or wrap ``conn`` (a pooled connection set up by ``configure_reader``)."""
        self.dsn = dsn
        if conn is not None:
            self.conn = conn
            self.server = f"{conn.info.host}:{conn.info.port}"
            return
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.server = f"{self.conn.info.host}:{self.conn.info.port}"
        if read_only:
            self.migrate(read_only=True)
            configure_reader(self.conn, statement_timeout_ms)
            return
        self.conn.execute("SET client_min_messages = warning")
        with self.conn.transaction():
            # Serialise concurrent first-time migrations of the same database.
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext('saedb.migrate'))")
            self.migrate()
        configure_search(self.conn)
        register_vector(self.conn)

    @contextmanager
    def naming_the_server(self) -> Iterator[None]:
        """A connection lost mid-statement says which server it was to (psycopg says only 'server
        closed the connection unexpectedly'; a cluster has several): the same error class, the
        server's host:port added."""
        try:
            yield
        except psycopg.OperationalError as exc:
            if not self.conn.broken:
                raise
            raise type(exc)(f"{str(exc).splitlines()[0]} (the PostgreSQL server at {self.server})") from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.naming_the_server():
            self.conn.execute(*to_psycopg(sql, params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.naming_the_server():
            return self.conn.execute(*to_psycopg(sql, params)).fetchall()

    def named_query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        with self.naming_the_server(), self.conn.cursor() as cur:
            cur.execute(*to_psycopg(sql, params))
            return [c.name for c in cur.description or ()], cur.fetchall() if cur.description is not None else []

    def arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        with self.naming_the_server(), self.conn.cursor() as cur:
            cur.execute(*to_psycopg(sql, params))
            if cur.description is None:
                return pa.table({})
            names, rows = [c.name for c in cur.description], cur.fetchall()
        columns = zip(*rows) if rows else ([] for _ in names)
        return pa.table([pa.array([_plain_value(v) for v in column]) for column in columns], names=names)

    def run_script(self, sql: str) -> None:
        self.conn.execute(sql)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.naming_the_server(), self.conn.transaction():
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        with self.transaction():
            self.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    @contextmanager
    def exact_scan(self) -> Iterator[None]:
        with self.transaction():
            self.execute("SET LOCAL enable_indexscan = off")  # the HNSW scan is an index scan
            self.execute("SET LOCAL enable_seqscan = on")
            yield

    def bind_embedder(self, name: str, dim: int) -> None:
        with self.transaction():
            # Two first loads at once: the second waits here for the first to commit, then finds it bound.
            self.execute("SELECT pg_advisory_xact_lock(hashtext('saedb.bind_embedder'))")
            super().bind_embedder(name, dim)

    @contextmanager
    def encoding_deferred(self) -> Iterator[None]:
        self.execute("SET saedb.encode_later = on")  # read by the insert trigger (functions.sql)
        try:
            yield
        finally:
            if not self.conn.broken:
                self.execute("RESET saedb.encode_later")

    @contextmanager
    def publishing(self) -> Iterator[None]:
        with self.transaction():
            # Conflicts with itself (a second publisher waits) but not with readers' ACCESS SHARE.
            self.execute("LOCK TABLE sae_models IN SHARE ROW EXCLUSIVE MODE")
            yield

    def close(self) -> None:
        self.conn.close()

    def vector_param(self, values: np.ndarray) -> Any:
        return np.asarray(values, dtype=np.float32)

    def fetch_vectors(self, sql: str, params: Sequence[Any] = ()) -> np.ndarray:
        with self.conn.cursor(binary=True) as cur:
            rows = cur.execute(*to_psycopg(sql, params)).fetchall()
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return _stack([r[0] for r in rows])

    def copy_rows(self, table: str, columns: dict[str, str], rows: Iterable[tuple]) -> None:
        """Binary COPY into ``table``; ``columns`` maps column name to Postgres type."""
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(columns.values()))
            for row in rows:
                copy.write_row(row)

    def insert_rows(self, table: str, rows: pa.Table) -> None:
        kinds = {pa.int32(): "int4", pa.int64(): "int8", pa.float64(): "float8"}
        columns = {field.name: kinds[field.type] for field in rows.schema}
        self.copy_rows(table, columns, zip(*(column.to_pylist() for column in rows.columns)))

    def stage_documents(self, batch: DocumentBatch, doc_ids: Sequence[int] | None = None) -> None:
        """The batch in the session's temporary table ``stage_docs`` (``pos``: its order in the
        batch; ``doc_id``: the given ids, else NULL), emptied when the transaction commits."""
        columns = ", ".join(f"{name} {kind}" for name, kind in STAGE_COLUMNS.items())
        self.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_docs ({columns}) ON COMMIT DELETE ROWS")
        ids = doc_ids if doc_ids is not None else itertools.repeat(None)
        rows = zip(batch.arxiv_ids, batch.titles, batch.abstracts, batch.categories, batch.subjects, batch.published, batch.years)
        self.copy_rows("stage_docs", STAGE_COLUMNS, ((doc_id, pos, *row) for pos, (doc_id, row) in enumerate(zip(ids, rows))))

    def insert_documents(self, batch: DocumentBatch) -> int:
        with self.transaction(), self.conn.cursor() as cur:
            self.stage_documents(batch)
            added = cur.execute(
                "WITH added AS (INSERT INTO papers (arxiv_id, title, abstract, categories, subjects, published, year, corpus) "
                "SELECT arxiv_id, title, abstract, categories, subjects, published, year, %s FROM stage_docs ORDER BY pos "
                "ON CONFLICT (arxiv_id) DO NOTHING RETURNING doc_id, arxiv_id) "
                "SELECT a.doc_id, s.pos FROM added a JOIN stage_docs s USING (arxiv_id)",
                (batch.corpus,),
            ).fetchall()
            self.copy_rows("embeddings", {"doc_id": "int8", "embedding": "vector"}, ((d, batch.embeddings[p]) for d, p in added))
        return len(added)

    def copy_weights(self, model_id: int, sae: SAE) -> None:
        self.copy_rows(
            "sae_encoder",
            {"model_id": "int4", "feature_id": "int4", "w_enc": "vector", "b_lat": "float4"},
            ((model_id, i, sae.w_enc[i], b) for i, b in enumerate(sae.b_lat.tolist())),
        )
        self.copy_rows(
            "sae_decoder",
            {"model_id": "int4", "feature_id": "int4", "w_dec": "vector"},
            ((model_id, i, sae.w_dec[i]) for i in range(sae.n_latents)),
        )

    def copy_codes(self, model_id: int, doc_ids: np.ndarray, codes: SparseCodes) -> None:
        active = codes.active_mask()
        docs = np.repeat(doc_ids.astype(np.int64), active.sum(axis=1)).tolist()
        rows = zip(itertools.repeat(model_id), docs, codes.indices[active].tolist(), codes.values[active].tolist())
        self.copy_rows("sae_codes", {"model_id": "int4", "doc_id": "int8", "feature_id": "int4", "activation": "float4"}, rows)

    def iter_embeddings(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        with self.transaction(), self.conn.cursor(name="saedb_embeddings", binary=True) as cur:
            cur.itersize = batch_size
            cur.execute("SELECT doc_id, embedding FROM embeddings ORDER BY doc_id")
            while rows := cur.fetchmany(batch_size):
                yield (
                    np.array([r[0] for r in rows], dtype=np.int64),
                    _stack([r[1] for r in rows]),
                )

    def embedding_range(self, first: int, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        bounds, params = ("doc_id >= %s", [first]) if stop is None else ("doc_id >= %s AND doc_id < %s", [first, stop])
        with self.conn.cursor(binary=True) as cur:
            rows = cur.execute(f"SELECT doc_id, embedding FROM embeddings WHERE {bounds} ORDER BY doc_id", params).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
        return np.array([r[0] for r in rows], dtype=np.int64), _stack([r[1] for r in rows])

    def create_embeddings_index(self) -> None:
        """HNSW with pgvector's m=16, ef_construction=64, built with maintenance_work_mem raised
        (for this build only) to what the graph needs, capped at HNSW_BUILD_MEMORY_MB: a graph
        that outgrows it is finished on disk, several times slower (bench_search at 1M)."""
        if self.query("SELECT to_regclass('embeddings_hnsw') IS NOT NULL")[0][0]:
            return
        rows, dim = self.query("SELECT count(*), coalesce(max(vector_dims(embedding)), 0) FROM embeddings")[0]
        needed_mb = math.ceil(2 * rows * (4 * dim + 2 * 16 * 8 + 64) / 2**20)
        with self.transaction():
            current_mb = self.query("SELECT setting::bigint * 1024 / 1048576 FROM pg_settings WHERE name = 'maintenance_work_mem'")[0][0]
            if needed_mb > current_mb:
                self.execute(f"SET LOCAL maintenance_work_mem = '{min(needed_mb, HNSW_BUILD_MEMORY_MB)}MB'")
            self.execute("CREATE INDEX IF NOT EXISTS embeddings_hnsw ON embeddings USING hnsw (embedding vector_cosine_ops)")
