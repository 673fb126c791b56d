-- Embeddings of the database's one embedder; {dim} is its dimension. embedding_hash is part of
-- the search indexes' stamp (exact_index.py): the table refuses a vector changed without it.
CREATE TABLE IF NOT EXISTS {table} (
    doc_id         BIGINT PRIMARY KEY,
    embedding      FLOAT[{dim}] NOT NULL,
    embedding_hash UBIGINT NOT NULL CHECK (embedding_hash = hash(embedding))
);
