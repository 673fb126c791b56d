-- Embeddings of the database's one embedder; {dim} is its dimension. Written only by the
-- loader, in the same transaction as their papers rows (no per-row foreign-key check).
CREATE TABLE IF NOT EXISTS embeddings (
    doc_id    bigint PRIMARY KEY,
    embedding vector({dim}) NOT NULL
);

CALL saedb_create_encode_trigger();
