"""What a DuckDB file needs before saedb's schema scripts can run on it, and after.

Rules:
- DuckDB binds a view as it is created, so the tables the views read are in place first: an
  embeddings table from before content hashes is copied once into one with them (DuckDB cannot
  add a CHECK constraint to a table); a file before its first load gets an empty stand-in view
  for ``embeddings`` (code_status reads it), which the first load replaces with the table; a
  code table from before coded_documents takes its new name, sae_code_rows.
- After the scripts, the codes of a file from before coded_documents are taken as those of the
  documents up to the last one they hold (a document without codes before it had no feature
  firing); later ones are left to `saedb encode`.
"""

from __future__ import annotations

from saedb.backends.base import Backend
from saedb.sqlfiles import read_sql

STAND_IN = "saedb_stand_in"  # the column that marks the empty embeddings view of a database before its first load


def before_scripts(backend: Backend) -> None:
    add_content_hashes(backend)
    relations = dict(backend.query("SELECT table_name, table_type FROM information_schema.tables "
                                   "WHERE table_schema = current_schema() AND table_name IN ('embeddings', 'sae_codes')"))
    if "embeddings" not in relations:
        backend.execute(f"CREATE VIEW embeddings AS SELECT CAST(NULL AS BIGINT) AS doc_id, CAST(NULL AS FLOAT[]) AS embedding, "
                        f"CAST(NULL AS UBIGINT) AS embedding_hash, TRUE AS {STAND_IN} WHERE FALSE")
    if relations.get("sae_codes") == "BASE TABLE":
        backend.execute("ALTER TABLE sae_codes RENAME TO sae_code_rows")


def after_scripts(backend: Backend) -> None:
    backend.execute("INSERT INTO coded_documents SELECT m.model_id, e.doc_id, e.embedding_hash FROM sae_models m "
                    "JOIN (SELECT model_id, max(doc_id) AS last FROM sae_code_rows GROUP BY model_id) c USING (model_id) "
                    "JOIN embeddings e ON e.doc_id <= c.last "
                    "WHERE m.status = 'ready' AND NOT EXISTS (SELECT 1 FROM coded_documents d WHERE d.model_id = m.model_id)")


def drop_stand_in(backend: Backend) -> None:
    """Make way for the embeddings table of a first load."""
    if backend.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'embeddings' "
                     "AND table_schema = current_schema() AND column_name = ?", (STAND_IN,))[0][0]:
        backend.execute("DROP VIEW embeddings")


def add_content_hashes(backend: Backend) -> None:
    columns = {name for (name,) in backend.query(
        "SELECT c.column_name FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE table_name = 'embeddings' AND table_schema = current_schema() AND t.table_type = 'BASE TABLE'")}
    if not columns or "embedding_hash" in columns or (bound := backend.embedder()) is None:
        return
    with backend.transaction():
        backend.run_script(read_sql(backend.dialect, "embeddings.sql", dim=bound[1], table="embeddings_upgrade"))
        backend.execute("INSERT INTO embeddings_upgrade SELECT doc_id, embedding, hash(embedding) FROM embeddings")
        backend.execute("DROP TABLE embeddings")
        backend.execute("ALTER TABLE embeddings_upgrade RENAME TO embeddings")
