"""The backend interface shared by DuckDB and PostgreSQL.

Shared logic (schema, metadata, model weights, documents) is written once here in
portable SQL with ``?`` placeholders; each backend supplies the driver primitives and
its bulk-load path (Arrow for DuckDB, binary COPY for Postgres).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from saedb.errors import ConfigurationError, OlderSchemaError, UnknownModelError
from saedb.sae import SAE, SparseCodes
from saedb.sqlfiles import read_sql

# Entries of a model's metrics copied into columns of sae_models: training figures, and the
# model an untrained control stands beside.
MODEL_FIGURES = ("steps", "normalised_mse", "dead_fraction", "enc_dec_cosine", "control_of")


@dataclass(frozen=True)
class DocumentBatch:
    """Validated documents with their embeddings, ready for one bulk insert."""

    arxiv_ids: list[str]
    titles: list[str]
    abstracts: list[str]
    categories: list[list[str]]
    subjects: list[list[str]]
    published: list[date | None]
    years: list[int | None]
    corpus: str
    embeddings: np.ndarray  # float32 (rows, dim)

    def __len__(self) -> int:
        return len(self.arxiv_ids)


class Backend(ABC):
    """A connection to a saedb database."""

    dialect: str
    schema_files: tuple[str, ...]
    in_process_search: bool = False  # True: nearest() ranks exactly in this process (else SQL ranks)
    # Every table with rows of a model version, by its model_id (saedb.models.drop_model): eval_results
    # hangs off eval_runs, feature_matches names a model in two columns, sae_models goes last.
    model_tables: tuple[str, ...] = ("model_holdout", "sae_encoder", "sae_decoder", "feature_labels", "label_controls",
                                     "feature_cooccurrence", "family_members", "feature_families", "eval_runs")
    codes_table = "sae_codes"  # where codes are written (and read without a check)
    coded_table = "sae_codes"  # a (model_id, doc_id) row for every document a model's codes were written for
    # The documents of a model (its id the parameter) whose codes no longer describe the table: here, removed ones.
    changed_documents_sql = ("SELECT DISTINCT c.doc_id FROM sae_codes c WHERE c.model_id = ? "
                             "AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.doc_id = c.doc_id)")

    # --- driver primitives -------------------------------------------------
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement with ``?`` placeholders."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement with ``?`` placeholders and return all rows."""

    @abstractmethod
    def named_query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        """Like ``query``, with the result's column names (none for a statement without a result)."""

    @abstractmethod
    def arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement with ``?`` placeholders and return its rows as an Arrow table with
        the result's column names (an empty table for a statement without a result)."""

    @abstractmethod
    def run_script(self, sql: str) -> None:
        """Run a multi-statement script (DDL)."""

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all."""

    @abstractmethod
    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read-only transaction: every statement inside sees the database as it was when it
        began, and writes are refused (the database's own error). Not inside another transaction."""

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """The transaction of a model version's write-back, one publisher at a time (model ids
        and versions are allocated as max + 1 inside it). Readers are never blocked."""
        with self.transaction():
            yield

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """Many consecutive commits (a load, an incremental encode), each still durable on its own."""
        yield

    @contextmanager
    def encoding_deferred(self) -> Iterator[None]:
        """Embeddings inserted inside are left for the caller to encode (in batches, with numpy)
        where the database would encode them as they arrive (Postgres's insert trigger)."""
        yield

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def vector_param(self, values: np.ndarray) -> Any:
        """Adapt a float32 vector for use as a query parameter."""

    @abstractmethod
    def fetch_vectors(self, sql: str, params: Sequence[Any] = ()) -> np.ndarray:
        """Run a query whose single column is a vector; return a float32 (rows, dim) matrix."""

    # --- bulk paths ----------------------------------------------------------
    @abstractmethod
    def insert_documents(self, batch: DocumentBatch) -> int:
        """Insert papers and their embeddings; skip arxiv_ids already present. Returns rows added."""

    @abstractmethod
    def copy_weights(self, model_id: int, sae: SAE) -> None:
        """Bulk-write encoder and decoder rows of a model."""

    @abstractmethod
    def copy_codes(self, model_id: int, doc_ids: np.ndarray, codes: SparseCodes) -> None:
        """Bulk-write the active codes of a batch of documents in long form."""

    @abstractmethod
    def insert_rows(self, table: str, rows: pa.Table) -> None:
        """Bulk-insert an Arrow table (int32, int64 and float64 columns) into the columns of
        ``table`` that it names."""

    @abstractmethod
    def iter_embeddings(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream (doc_ids, float32 matrix) batches ordered by doc_id; holds one batch in RAM."""

    @abstractmethod
    def embedding_range(self, first: int, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(doc_ids, float32 matrix) of the documents with ``first <= doc_id < stop`` (no upper
        bound when stop is None), ordered by doc_id; a range scan, not a pass over the table."""

    def embedding_span(self) -> tuple[int, int, int]:
        """(smallest doc_id, largest doc_id, number of embeddings); (0, -1, 0) when there are none."""
        low, high, count = self.query("SELECT min(doc_id), max(doc_id), count(*) FROM embeddings")[0]
        return (0, -1, 0) if not count else (int(low), int(high), int(count))

    def nearest(self, query: np.ndarray, limit: int, where: tuple[str, Sequence[Any]] | None = None,
                exact: bool = False, steered_cosine: float | None = None) -> list[tuple]:
        """(doc_id, arxiv_id, title, year, cosine distance) of the ``limit`` nearest papers among
        those matching ``where`` (SQL over papers, its parameters), where ``in_process_search`` is set;
        ``steered_cosine``: the query was steered off the data, to this cosine with the query it
        came from (an approximate index widens its beam the farther it went)."""
        raise NotImplementedError(f"{type(self).__name__} ranks in SQL")

    @contextmanager
    def exact_scan(self) -> Iterator[None]:
        """Inside: an ``ORDER BY embedding <=> …`` in SQL ranks every row, not an approximate index."""
        yield

    @abstractmethod
    def create_embeddings_index(self) -> None:
        """Build the nearest-neighbour index on embeddings, where the backend has one."""

    # --- shared logic --------------------------------------------------------
    def migrate(self, read_only: bool = False) -> None:
        """Apply schema and functions if this database does not have this exact version yet.

        Connecting to an up-to-date database runs no DDL, so it never waits on the locks
        of a long write-back in progress. A read-only connection only checks the version.
        """
        scripts = [read_sql(self.dialect, name) for name in self.schema_files]
        fingerprint = hashlib.sha256("\n".join(scripts).encode()).hexdigest()[:16]
        current = self.schema_fingerprint()
        if current == fingerprint:
            return
        if read_only and current is None:
            raise ConfigurationError("no saedb database here: create one by loading a corpus (saedb load)")
        if read_only:
            raise OlderSchemaError("the database was made by an older saedb: run `saedb upgrade` once to bring it to this version "
                                   "(it writes: a DuckDB file must be open nowhere else)")
        for script in scripts:
            self.run_script(script)
        self.upgrade_tables()
        self.set_meta("schema", fingerprint)

    def upgrade_tables(self) -> None:
        """Bring tables made by an older saedb to the current layout where a script cannot (part of ``migrate``)."""

    def schema_fingerprint(self) -> str | None:
        """Fingerprint of the schema scripts last applied, None on a new database."""
        tables = self.query("SELECT count(*) FROM information_schema.tables WHERE table_name = 'saedb_meta' "
                            "AND table_schema = current_schema()")
        return self.meta("schema") if tables[0][0] else None

    def set_meta(self, key: str, value: str) -> None:
        self.execute("INSERT INTO saedb_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM saedb_meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def embedder(self) -> tuple[str, int] | None:
        """(name, dim) of the embedder this database is bound to, if any. A binding never
        changes once made (bind_embedder refuses another), so this connection keeps it."""
        bound = getattr(self, "_bound_embedder", None)
        if bound is None:
            rows = dict(self.query("SELECT key, value FROM saedb_meta WHERE key IN ('embedder', 'embedding_dim')"))
            if "embedder" in rows and "embedding_dim" in rows:
                bound = self._bound_embedder = (rows["embedder"], int(rows["embedding_dim"]))
        return bound

    def bind_embedder(self, name: str, dim: int) -> None:
        """Bind the database to one embedder (first load) or check it matches the bound one."""
        bound = self.embedder()
        if bound is not None:
            if bound != (name, dim):
                raise ConfigurationError(
                    f"this database holds {bound[0]} embeddings ({bound[1]}-d); "
                    f"cannot load with {name} ({dim}-d). Use another database or the same embedder."
                )
            return
        with self.transaction():
            self.execute("INSERT INTO saedb_meta VALUES ('embedder', ?), ('embedding_dim', ?)", (name, str(dim)))
            self.run_script(read_sql(self.dialect, "embeddings.sql", dim=dim, table="embeddings"))

    def sync_documents(self) -> list[tuple[str | None, str]]:
        """In the workspace of an attached table (saedb attach): check the table's rules, leave
        out the keys that break them (returned as (key, reason); the views skip them) and number
        the new keys, so that its new rows are documents. Elsewhere: nothing to do."""
        statement, check = self.meta("attached_sync"), self.meta("attached_check")
        skipped: list[tuple[str | None, str]] = []
        with self.transaction():
            if check:
                skipped = [(key, reason) for key, reason in self.query(check)]
                self.execute("DELETE FROM skipped_keys")
                for key, reason in skipped:
                    if key is not None:
                        self.execute("INSERT INTO skipped_keys VALUES (?, ?)", (key, reason))
            if statement:
                self.execute(statement)
        return skipped

    def require_embedder(self) -> tuple[str, int]:
        bound = self.embedder()
        if bound is None:
            raise ConfigurationError("the database has no embeddings yet: run `saedb load` first")
        return bound

    def existing_arxiv_ids(self) -> set[str]:
        return {row[0] for row in self.query("SELECT arxiv_id FROM papers")}

    def record_load_errors(self, source: str, errors: Sequence[tuple[int, str, str]]) -> None:
        """Keep (line, reason, raw) of rejected rows; re-running a load does not duplicate them."""
        for line, reason, raw in errors:
            self.execute(
                "INSERT INTO load_errors (source, line, reason, raw) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (source, line, reason, raw),
            )

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count(*) FROM {table}")[0][0])  # table names are ours, not user input

    def model_row(self, model_id: int) -> dict[str, Any]:
        rows = self.query(
            "SELECT model_id, name, version, embedder, d_in, n_latents, k, n_documents, status, metrics "
            "FROM sae_models WHERE model_id = ? AND status = 'ready'",
            (model_id,),
        )
        if not rows:
            raise UnknownModelError(f"unknown model {model_id} (no published model with that id)")
        keys = ("model_id", "name", "version", "embedder", "d_in", "n_latents", "k", "n_documents", "status", "metrics")
        row = dict(zip(keys, rows[0]))
        if isinstance(row["metrics"], str):
            row["metrics"] = json.loads(row["metrics"])
        return row

    def load_sae(self, model_id: int) -> SAE:
        """Read a published model's weights into the numpy core."""
        info = self.model_row(model_id)
        w_enc = self.fetch_vectors("SELECT w_enc FROM sae_encoder WHERE model_id = ? ORDER BY feature_id", (model_id,))
        w_dec = self.decoder(model_id)
        b_pre = self.fetch_vectors("SELECT b_pre FROM sae_models WHERE model_id = ?", (model_id,))[0]
        b_lat = np.array(
            [r[0] for r in self.query("SELECT b_lat FROM sae_encoder WHERE model_id = ? ORDER BY feature_id", (model_id,))],
            dtype=np.float32,
        )
        return SAE(w_enc=w_enc, b_lat=b_lat, w_dec=w_dec, b_pre=b_pre, k=info["k"])

    def steering_model(self, model_id: int) -> SAE | None:
        """Weights this process steers with itself, where the backend keeps them (DuckDB); None:
        steering is computed by SQL's functions."""
        return None

    def decoder(self, model_id: int) -> np.ndarray:
        """The model's decoder directions, one row per feature."""
        return self.fetch_vectors("SELECT w_dec FROM sae_decoder WHERE model_id = ? ORDER BY feature_id", (model_id,))

    def insert_model_row(self, name: str, sae: SAE, embedder: str, metrics: dict[str, Any]) -> int:
        """Insert a 'building' model row for the next version of ``name``; returns its model_id."""
        model_id = int(self.query("SELECT coalesce(max(model_id), 0) + 1 FROM sae_models")[0][0])
        version = int(self.query("SELECT coalesce(max(version), 0) + 1 FROM sae_models WHERE name = ?", (name,))[0][0])
        figures = [metrics.get(column) for column in MODEL_FIGURES]
        self.execute(
            f"INSERT INTO sae_models (model_id, name, version, embedder, d_in, n_latents, k, status, b_pre, metrics, "
            f"{', '.join(MODEL_FIGURES)}) VALUES (?, ?, ?, ?, ?, ?, ?, 'building', ?, CAST(? AS JSON){', ?' * len(MODEL_FIGURES)})",
            (model_id, name, version, embedder, sae.d, sae.n_latents, sae.k, self.vector_param(sae.b_pre), json.dumps(metrics), *figures),
        )
        return model_id

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
