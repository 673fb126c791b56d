-- Embeddings of the database's one embedder; {dim} is its dimension.
CREATE TABLE IF NOT EXISTS embeddings (
    doc_id    BIGINT PRIMARY KEY,
    embedding FLOAT[{dim}] NOT NULL
);
