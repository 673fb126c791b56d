"""DuckDB backend: the embedded default (a file path, no server). Bulk loads go through Arrow."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from saedb.arrow_vectors import fixed_size_vectors, hashed_rows, ids_and_vectors, vectors_to_matrix
from saedb.backends.approximate_index import APPROXIMATE_FROM, EXPANSION_SEARCH, ApproximateIndex, steered_expansion
from saedb.backends.base import Backend, DocumentBatch
from saedb.backends.duckdb_files import SearchIndexes, SharedDatabase, in_schema, shadow_functions
from saedb.backends.duckdb_upgrades import after_scripts, before_scripts, drop_stand_in
from saedb.backends.exact_index import STAMP_COLUMNS, STAMP_SQL, ExactIndex, Stamp
from saedb.backends.paper_rows import PAPER_ROWS_SQL, PAPERS_STAMP_SQL, PaperTable
from saedb.errors import ConfigurationError, DatabaseBusyError, InvalidInputError
from saedb.sae import SAE, SparseCodes
from saedb.sqlfiles import read_sql
from saedb.udfs.duckdb import register_udfs

BULK_CHECKPOINT_THRESHOLD = "1GB"
SEARCH_ATTEMPTS = 5  # rankings of one search before a table that keeps changing is an error
PAPERS_SQL = "SELECT doc_id, arxiv_id, title, year FROM papers WHERE doc_id IN ({marks})"
# A search's papers and the embeddings' stamp in one statement: the stamp row is the one without a doc id.
PAPERS_WITH_STAMP_SQL = f"""
SELECT NULL::BIGINT, NULL, NULL, NULL, {STAMP_COLUMNS} FROM embeddings
UNION ALL
SELECT doc_id, arxiv_id, title, year, NULL, NULL, NULL, NULL FROM papers WHERE doc_id IN ({{marks}})
"""


class PaperSubset:
    """The papers matching ``condition`` (SQL over papers, ``?`` placeholders): a search filter.
    On a writable database they are read for each search (its rows may change between two); a
    read-only one cannot change while it is open, so there they are read once and have a ``key``."""

    def __init__(self, backend: "DuckDBBackend", condition: str, params: Sequence[Any]) -> None:
        self.backend, self.condition, self.params = backend, condition, list(params)
        self.key = (condition, *self.params) if backend.indexes.read_only else None

    def ids(self) -> np.ndarray:
        if self.key is not None:
            return self.backend.indexes.allowed(self.key, self._read_ids)
        return np.sort(self._read_ids())

    def _read_ids(self) -> np.ndarray:
        table = self.backend.arrow(f"SELECT doc_id FROM papers WHERE {self.condition}", self.params)
        return table.column(0).to_numpy().astype(np.int64)


class DuckDBBackend(Backend):
    dialect = "duckdb"
    in_process_search = True
    schema_files = ("schema.sql", "views.sql", "analytics.sql")
    model_tables = (*Backend.model_tables, "sae_code_rows", "coded_documents")
    codes_table, coded_table = "sae_code_rows", "coded_documents"
    changed_documents_sql = ("SELECT c.doc_id FROM coded_documents c WHERE c.model_id = ? AND NOT EXISTS "
                             "(SELECT 1 FROM embeddings e WHERE e.doc_id = c.doc_id AND e.embedding_hash = c.embedding_hash)")

    def __init__(self, path: str, con: duckdb.DuckDBPyConnection | None = None, read_only: bool = False,
                 schema: str | None = None, indexes: SearchIndexes | None = None, database: SharedDatabase | None = None) -> None:
        self.path = path
        self.database = database  # the shared database (a sibling's: its parent's, which it does not own)
        self.schema = schema  # a workspace schema (saedb attach) searched before main
        self._depth = 0
        self._in_snapshot = False
        self._snapshot_stamp: Stamp | None = None  # inside snapshot(): the embeddings' stamp, once read
        self._snapshot_table: PaperTable | None = None  # inside snapshot(): every paper's row, once read
        self.shared: SharedDatabase | None = None
        self.indexes = indexes or SearchIndexes(ExactIndex(), ApproximateIndex(None, False))  # a sibling shares its parent's
        if con is not None:  # a sibling over an open database: no migration, no UDFs
            self.con = self._in_schema(con)
            return
        self.shared = self.database = SharedDatabase.acquire(path, read_only)
        self.indexes = self.shared.indexes(schema)
        self.con = self._in_schema(self.shared.root.cursor())
        try:
            self.migrate(read_only=read_only)
            if not read_only:
                self.ensure_sql_macros()
            self._ensure_udfs()
        except BaseException:
            self.close()
            raise

    def migrate(self, read_only: bool = False) -> None:
        """As Backend.migrate, with what the schema's views read in place first (saedb.backends.duckdb_upgrades)."""
        if not read_only:
            before_scripts(self)
        super().migrate(read_only)

    def upgrade_tables(self) -> None:
        after_scripts(self)

    def _in_schema(self, con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        return in_schema(con, self.schema)

    def _ensure_udfs(self) -> None:
        """(Re-)register the UDFs when missing or built for another embedder binding."""
        assert self.shared is not None
        with SharedDatabase._lock:
            bound = self.embedder()
            if not self.shared.functions or self.shared.udfs_for != bound:
                self.shared.models = register_udfs(self.shared.root, self.shared.functions, self.sibling(), bound, self.shared.read_only)
                self.shared.udfs_for = bound
        self.shadow_sql_macros()

    def shadow_sql_macros(self) -> None:
        """Temporary macros on this connection that route saedb's function names to the Python
        UDFs (temporary objects come first in DuckDB's name resolution)."""
        assert self.shared is not None
        shadow_functions(self.con, self.shared.functions)

    def ensure_sql_macros(self) -> None:
        """Persist the pure-SQL twins of the functions in the file, for DuckDB clients without
        saedb, once the embedding dimension is known (rewritten when saedb's version of them changes)."""
        bound = self.embedder()
        if bound is None:
            return
        script = read_sql(self.dialect, "macros.sql", dim=bound[1])
        fingerprint = hashlib.sha256(script.encode()).hexdigest()[:16]
        if self.meta("sql_macros") != fingerprint:
            with self.transaction():
                self.run_script(script)
                self.set_meta("sql_macros", fingerprint)

    def steering_model(self, model_id: int) -> SAE | None:
        """The weights SQL's steering functions use (the UDFs' cache: read once per model version,
        checked once on a read-only database); UnknownModelError for no published model."""
        models = self.database.models if self.database is not None else None
        return None if models is None else models.get(model_id)

    def sibling(self, functions: bool = False) -> "DuckDBBackend":
        """A backend on a separate connection to the same database, usable from inside UDFs
        (code running in a query cannot use that query's own connection). It is a cursor of
        the shared root, so it stays valid whichever backend closes first. ``functions``: with
        saedb's SQL functions (for request threads; not from inside a UDF)."""
        root = self.shared.root if self.shared is not None else self.con
        sibling = DuckDBBackend(self.path, con=root.cursor(), schema=self.schema, indexes=self.indexes, database=self.database)
        if functions and self.shared is not None:
            shadow_functions(sibling.con, self.shared.functions)
        return sibling

    def bind_embedder(self, name: str, dim: int) -> None:
        drop_stand_in(self)
        super().bind_embedder(name, dim)
        self.ensure_sql_macros()
        self._ensure_udfs()  # vectors now come back as FLOAT[dim]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.named_query(sql, params)[1]

    def named_query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple]]:
        result = self.con.execute(sql, list(params))
        if result is None:  # DuckDB's answer to a text without a statement: empty, ";" or only a comment
            raise InvalidInputError("the SQL text holds no statement")
        return [column[0] for column in result.description or ()], result.fetchall()

    def arrow(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        relation = self.con.sql(sql, params=list(params) or None)
        return relation.to_arrow_table() if relation is not None else pa.table({})

    def run_script(self, sql: str) -> None:
        self.con.execute(sql)

    @contextmanager
    def publishing(self) -> Iterator[None]:
        assert self.shared is not None
        with self.shared.publish_lock, self.transaction():
            yield

    @contextmanager
    def bulk_writes(self) -> Iterator[None]:
        """Checkpoint after 1 GB of write-ahead log instead of DuckDB's 16 MB: a checkpoint
        rewrites the tables' indexes, so checkpointing every few batches made a 1M-document
        load quadratic (148 s against 82 s; the commits stay durable in the log)."""
        previous = self.con.execute("SELECT current_setting('checkpoint_threshold')").fetchall()[0][0]
        self.con.execute(f"SET checkpoint_threshold = '{BULK_CHECKPOINT_THRESHOLD}'")
        try:
            yield
        finally:
            self.con.execute(f"SET checkpoint_threshold = '{previous}'")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:  # nested: part of the enclosing transaction
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.con.begin()
        self._depth = 1
        try:
            yield
        except BaseException:
            self.con.rollback()
            raise
        else:
            self.con.commit()
        finally:
            self._depth = 0

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """DuckDB's snapshot isolation in a read-only transaction: inside, searches read the
        embeddings' stamp once (nothing can change what they see), as a read-only instance does."""
        if self._depth:
            raise ConfigurationError("snapshot() starts a transaction of its own: not inside another one")
        self.con.execute("BEGIN TRANSACTION READ ONLY")
        self._depth, self._in_snapshot = 1, True
        try:
            yield
        finally:
            self._depth, self._in_snapshot, self._snapshot_stamp, self._snapshot_table = 0, False, None, None
            self.con.rollback()  # nothing to commit; also ends a transaction a refused write aborted

    def close(self) -> None:
        self.con.close()
        if self.shared is not None:
            self.shared.release()
            self.shared = None

    def vector_param(self, values: np.ndarray) -> Any:
        return np.asarray(values, dtype=np.float32).tolist()

    def fetch_vectors(self, sql: str, params: Sequence[Any] = ()) -> np.ndarray:
        return vectors_to_matrix(self.con.sql(sql, params=list(params)).to_arrow_table().column(0))

    def insert_documents(self, batch: DocumentBatch) -> int:
        staged = pa.table(
            {
                "arxiv_id": batch.arxiv_ids,
                "title": batch.titles,
                "abstract": batch.abstracts,
                "categories": pa.array(batch.categories, pa.list_(pa.string())),
                "subjects": pa.array(batch.subjects, pa.list_(pa.string())),
                "published": pa.array(batch.published, pa.date32()),
                "year": pa.array(batch.years, pa.int32()),
                "embedding": fixed_size_vectors(batch.embeddings),
            }
        )
        with self.transaction(), self.staged(stage_docs=staged):
            added = self.con.execute(
                "INSERT INTO papers (arxiv_id, title, abstract, categories, subjects, published, year, corpus) "
                "SELECT arxiv_id, title, abstract, categories, subjects, published, year, ? FROM stage_docs "
                "ON CONFLICT (arxiv_id) DO NOTHING RETURNING doc_id",
                [batch.corpus],
            ).fetchall()
            self.con.execute(
                "INSERT INTO embeddings SELECT p.doc_id, s.embedding, hash(s.embedding) FROM stage_docs s "
                "JOIN papers p ON p.arxiv_id = s.arxiv_id ON CONFLICT (doc_id) DO NOTHING"
            )
        return len(added)

    @contextmanager
    def staged(self, **tables: pa.Table) -> Iterator[None]:
        """Arrow tables visible to SQL under their names for the block. If a statement failed
        (a full disk, say), the transaction is aborted and unregistering would raise "Current
        transaction is aborted" over the real error: then the names are left to the next
        registration, which replaces them."""
        for name, table in tables.items():
            self.con.register(name, table)
        try:
            yield
        finally:
            for name in tables:
                try:
                    self.con.unregister(name)
                except duckdb.TransactionException:
                    break

    def insert_rows(self, table: str, rows: pa.Table) -> None:
        with self.staged(stage_rows=rows):
            self.con.execute(f"INSERT INTO {table} ({', '.join(rows.column_names)}) SELECT * FROM stage_rows")

    def copy_weights(self, model_id: int, sae: SAE) -> None:
        features = pa.array(np.arange(sae.n_latents, dtype=np.int32))
        model = pa.array(np.full(sae.n_latents, model_id, dtype=np.int32))
        enc = pa.table(
            {"model_id": model, "feature_id": features, "w_enc": fixed_size_vectors(sae.w_enc), "b_lat": pa.array(sae.b_lat)}
        )
        dec = pa.table({"model_id": model, "feature_id": features, "w_dec": fixed_size_vectors(sae.w_dec)})
        with self.staged(stage_enc=enc, stage_dec=dec):
            self.con.execute("INSERT INTO sae_encoder SELECT * FROM stage_enc")
            self.con.execute("INSERT INTO sae_decoder SELECT * FROM stage_dec")

    def copy_codes(self, model_id: int, doc_ids: np.ndarray, codes: SparseCodes) -> None:
        active = codes.active_mask()
        rows = pa.table({"model_id": pa.array(np.full(int(active.sum()), model_id, dtype=np.int32)),
                         "doc_id": pa.array(np.repeat(doc_ids.astype(np.int64), active.sum(axis=1))),
                         "feature_id": pa.array(codes.indices[active]), "activation": pa.array(codes.values[active])})
        with self.staged(stage_codes=rows, stage_coded=pa.table({"doc_id": pa.array(doc_ids.astype(np.int64))})):
            self.con.execute("INSERT INTO sae_code_rows SELECT * FROM stage_codes")
            # in the transaction that read the vectors: the hashes are those the codes were computed from
            self.con.execute("INSERT INTO coded_documents SELECT ?, e.doc_id, e.embedding_hash FROM embeddings e "
                             "JOIN stage_coded s ON s.doc_id = e.doc_id", [model_id])

    def iter_embeddings(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Range scans of ``batch_size`` doc ids (batches are smaller where ids have gaps): an
        ORDER BY over the whole table would sort it, i.e. hold the corpus in memory."""
        low, high, _ = self.embedding_span()
        for first in range(low, high + 1, batch_size):
            doc_ids, matrix = self.embedding_range(first, first + batch_size)
            if len(doc_ids):
                yield doc_ids, matrix

    def nearest(self, query: np.ndarray, limit: int, where: tuple[str, Sequence[Any]] | None = None,
                exact: bool = False, steered_cosine: float | None = None) -> list[tuple]:
        """The ``limit`` papers nearest ``query`` among those matching ``where`` (SQL over papers,
        its parameters), as SEARCH_SQL's rows: from the HNSW graph when one was built and
        ``exact`` is not asked (a steered query, at ``steered_cosine`` to the query it came from,
        with the beam ``steered_expansion`` gives it), else from the in-memory copy of every embedding.

        Optimistic: ranked by the index as it stands, then the papers are read in the same
        statement as the table's stamp (a read-only instance reads the stamp once: no process can
        write the file while it is open); if the table changed since the index last saw it, the
        index is brought up to date and the ranking done again (one statement per search, not two).
        A table that changes under every one of SEARCH_ATTEMPTS rankings is an error, not a hang.
        A read-only instance's first search starts loading every paper's row (``PaperRows``)."""
        self.load_paper_rows()
        for _ in range(SEARCH_ATTEMPTS):
            graph = None if exact or not self.indexes.approximate.built else self.indexes.approximate
            if graph is not None:
                ids, distances = graph.nearest(query, limit, None if where is None else PaperSubset(self, *where),
                                               EXPANSION_SEARCH if steered_cosine is None else steered_expansion(steered_cosine))
            else:
                allowed = None if where is None else PaperSubset(self, *where).ids()
                ids, distances = self.indexes.exact.nearest(query, limit, allowed)
            stamp, papers = self.papers_with_stamp(ids)
            if stamp == (graph or self.indexes.exact).stamp:
                return [(*papers[doc_id], distance) for doc_id, distance in zip(ids.tolist(), distances.tolist()) if doc_id in papers]
            if graph is not None:
                graph.sync(stamp, self.embedding_hashes, self.embeddings_of)
            else:
                self.indexes.exact.refresh(stamp, self.hashed_range)
        raise DatabaseBusyError(f"the embeddings changed during each of {SEARCH_ATTEMPTS} attempts to search them")

    def papers_with_stamp(self, doc_ids: np.ndarray) -> tuple[Stamp, dict[int, tuple]]:
        """The embeddings' stamp and the (doc_id, arxiv_id, title, year) of ``doc_ids``'s papers,
        read in one statement (on a read-only instance: the papers, and the stamp read once)."""
        marks = ", ".join("?" * len(doc_ids)) or "NULL"
        if self._in_snapshot:
            return self.embeddings_stamp(), self._snapshot_papers().rows_of(doc_ids)
        if self.indexes.read_only:
            if self.indexes.papers is not None and self.indexes.papers.ready.is_set():
                return self.embeddings_stamp(), self.indexes.papers.rows_of(doc_ids)
            return self.embeddings_stamp(), {row[0]: row for row in self.query(PAPERS_SQL.format(marks=marks), doc_ids.tolist())}
        rows = self.query(PAPERS_WITH_STAMP_SQL.format(marks=marks), doc_ids.tolist())
        stamp = next((int(n), int(last), int(total), int(hashes)) for doc_id, *_, n, last, total, hashes in rows if doc_id is None)
        return stamp, {row[0]: row[:4] for row in rows if row[0] is not None}

    def _snapshot_papers(self) -> PaperTable:
        """Every paper's row as this snapshot sees them: read with their stamp by its first search,
        or those the last snapshot read where the stamp is the same."""
        if self._snapshot_table is None:
            stamp = tuple(self.query(PAPERS_STAMP_SQL)[0])
            held = self.indexes.snapshot_papers
            if held is None or held[0] != stamp:
                held = stamp, PaperTable(self.arrow(PAPER_ROWS_SQL))
                self.indexes.snapshot_papers = held
            self._snapshot_table = held[1]
        return self._snapshot_table

    def prepare_search(self) -> None:
        """Bring what searches rank from up to date now (the web app does, before its first
        request): the HNSW graph when one was built, else the in-memory embeddings; on a
        read-only instance, every paper's row starts loading."""
        self.load_paper_rows()
        if self.approximate_index() is None:
            self.search_index()

    def load_paper_rows(self) -> None:
        """Start loading every paper's row in the background (read-only instances; once)."""
        if self.indexes.papers is not None:
            self.indexes.papers.start()

    def search_index(self) -> ExactIndex:
        """The in-process copy of the embeddings, one per database and process (siblings, such
        as the web app's request connections, share it), brought up to date with the table (the
        first call loads it: about 9 s and 1.5 GB at 1M 384-d documents)."""
        self.indexes.exact.refresh(self.embeddings_stamp(), self.hashed_range)
        return self.indexes.exact

    def embeddings_stamp(self) -> Stamp:
        """(count, max, sum) of the embeddings' doc ids and the sum of their content hashes; on a
        read-only instance read once, inside a snapshot once for it."""
        known = self.indexes.fixed_stamp or self._snapshot_stamp
        if known is not None:
            return known
        count, last, total, hashes = self.query(STAMP_SQL)[0]
        stamp = int(count), int(last), int(total), int(hashes)
        if self.indexes.read_only:
            self.indexes.fixed_stamp = stamp
        elif self._in_snapshot:
            self._snapshot_stamp = stamp
        return stamp

    def approximate_index(self) -> ApproximateIndex | None:
        """The HNSW graph, brought up to date with the table; None when none was built."""
        graph = self.indexes.approximate
        if not graph.built:
            return None
        graph.sync(self.embeddings_stamp(), self.embedding_hashes, self.embeddings_of)
        return graph if graph.built else None

    def build_approximate_index(self) -> None:
        """A new HNSW graph of every embedding (replacing any), saved beside the file."""
        self.indexes.approximate.build(self.embedding_span(), self.hashed_range)

    def embedding_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every embedding's (doc id, content hash), in doc id order."""
        table = self.arrow("SELECT doc_id, embedding_hash FROM embeddings ORDER BY doc_id")
        return table.column(0).to_numpy().astype(np.int64), table.column(1).to_numpy().astype(np.uint64)

    def embeddings_of(self, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(doc ids, vectors, content hashes) of ``doc_ids``, read together."""
        with self.staged(saedb_wanted=pa.table({"doc_id": pa.array(doc_ids, pa.int64())})):
            return hashed_rows(self.arrow("SELECT doc_id, embedding, embedding_hash FROM embeddings "
                                          "WHERE doc_id IN (SELECT doc_id FROM saedb_wanted)"))

    def hashed_range(self, first: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``embedding_range`` with each row's content hash, read in the same statement (the search indexes' reader)."""
        return hashed_rows(self._range_table("doc_id, embedding, embedding_hash", first, stop))

    def embedding_range(self, first: int, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return ids_and_vectors(self._range_table("doc_id, embedding", first, stop))

    def _range_table(self, columns: str, first: int, stop: int | None) -> pa.Table:
        """``columns`` of the embeddings with first <= doc_id < stop, in doc id order (a range scan, on
        its own cursor; inside a snapshot on its connection, whose transaction a new cursor would not see)."""
        bounds, params = ("doc_id >= ?", [first]) if stop is None else ("doc_id >= ? AND doc_id < ?", [first, stop])
        return (self.con if self._in_snapshot else self._in_schema(self.con.cursor())).sql(
            f"SELECT {columns} FROM embeddings WHERE {bounds} ORDER BY doc_id", params=params).to_arrow_table()

    def create_embeddings_index(self) -> None:
        """After a load: bring the HNSW graph up to date, or build it once there are
        APPROXIMATE_FROM embeddings (below that, exact search is fast enough: bench_search)."""
        if self.approximate_index() is None and self.embedding_span()[2] >= APPROXIMATE_FROM:
            self.build_approximate_index()
