"""PostgreSQL + Citus: the Postgres backend with the distribution of ``citus.sql`` added
(chosen by ``connect`` when the database has the citus extension).

What differs from one server, and nothing else:
- the schema: ``citus.sql`` runs after ``schema.sql`` (documents, embeddings and codes
  distributed by doc_id, everything else reference tables), and again once the embeddings
  table exists;
- writes of codes go over one connection per worker (``citus.multi_shard_modify_mode``);
- exact search: the setting that turns the HNSW scan off must reach the shards;
- loading: an arXiv id is unique across the cluster through ``paper_keys`` (Citus enforces
  unique constraints within a shard only), so new papers are the rows that table accepts.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from saedb.backends.base import DocumentBatch
from saedb.backends.postgres import PostgresBackend


class CitusBackend(PostgresBackend):
    schema_files = ("schema.sql", "citus.sql", "functions.sql", "views.sql", "analytics.sql")

    def __init__(self, dsn: str, **options: Any) -> None:
        super().__init__(dsn, **options)
        # A transaction that writes codes to every shard and then updates sae_models (a reference
        # table) must use one connection per worker: Citus refuses it after a parallel write.
        self.conn.execute("SET citus.multi_shard_modify_mode TO 'sequential'")

    def bind_embedder(self, name: str, dim: int) -> None:
        super().bind_embedder(name, dim)
        self.execute("CALL saedb_distribute_tables()")

    @contextmanager
    def exact_scan(self) -> Iterator[None]:
        with self.transaction():
            self.execute("SET LOCAL citus.propagate_set_commands = 'local'")  # SET LOCAL reaches the workers' sessions
            with super().exact_scan():
                yield

    def insert_documents(self, batch: DocumentBatch) -> int:
        with self.transaction(), self.conn.cursor() as cur:
            # Ids in the order of the batch, from papers' own identity sequence; an arXiv id
            # that is already there (or that a concurrent load took first) leaves a gap.
            ids = [row[0] for row in cur.execute(
                "SELECT nextval(pg_get_serial_sequence('papers', 'doc_id')) FROM generate_series(1, %s)", (len(batch),))]
            self.stage_documents(batch, ids)
            added = {row[0] for row in cur.execute(
                "INSERT INTO paper_keys (arxiv_id, doc_id) SELECT arxiv_id, doc_id FROM stage_docs "
                "ON CONFLICT (arxiv_id) DO NOTHING RETURNING doc_id")}
            cur.execute(
                "INSERT INTO papers (doc_id, arxiv_id, title, abstract, categories, subjects, published, year, corpus) "
                "SELECT doc_id, arxiv_id, title, abstract, categories, subjects, published, year, %s FROM stage_docs "
                "WHERE doc_id = ANY(%s)",
                (batch.corpus, sorted(added)),
            )
            kept = [(pos, doc_id) for pos, doc_id in enumerate(ids) if doc_id in added]
            self.copy_rows("embeddings", {"doc_id": "int8", "embedding": "vector"}, ((d, batch.embeddings[p]) for p, d in kept))
        return len(kept)
