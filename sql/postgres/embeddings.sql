-- Embeddings of the database's one embedder; {dim} is its dimension. Written only by the
-- loader, in the same transaction as their papers rows (no per-row foreign-key check).
CREATE TABLE IF NOT EXISTS embeddings (
    doc_id    bigint PRIMARY KEY,
    embedding vector({dim}) NOT NULL
);

DO $$ BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('embeddings')) = 'r' THEN  -- a table, not an attached view
        CREATE OR REPLACE TRIGGER embeddings_auto_encode AFTER INSERT ON embeddings
            REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION saedb_encode_inserted();
    END IF;
END $$;
