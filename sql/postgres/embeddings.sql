-- Embeddings of the database's one embedder; {dim} is its dimension.
CREATE TABLE IF NOT EXISTS embeddings (
    doc_id    bigint PRIMARY KEY REFERENCES papers,
    embedding vector({dim}) NOT NULL
);
