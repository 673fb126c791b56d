-- Citus: what saedb's schema adds on a cluster (saedb.backends.citus), applied after schema.sql
-- and before functions.sql, so that the functions, which name these tables' row types, are
-- created on every node. Idempotent: a table already distributed is left as it is.
--
-- Documents, their embeddings and their codes are distributed by doc_id and co-located: a
-- document's rows live in shards of the same worker, so encoding, co-occurrence counts and the
-- joins of papers, embeddings and codes stay on one node. Everything per model, per label or
-- per run is a reference table (a copy on every node): sae_encode and steer read only local
-- rows wherever they run. Shards: citus.shard_count (saedb cluster sets 2 per worker).

-- A paper's arXiv id is unique across the cluster through paper_keys, distributed by arxiv_id
-- (Citus keeps unique constraints within a shard: papers, distributed by doc_id, cannot).
CREATE TABLE IF NOT EXISTS paper_keys (
    arxiv_id text PRIMARY KEY,
    doc_id   bigint NOT NULL
);
INSERT INTO paper_keys SELECT arxiv_id, doc_id FROM papers
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'papers'::regclass)
ON CONFLICT DO NOTHING;

CREATE OR REPLACE PROCEDURE saedb_distribute_tables()
LANGUAGE plpgsql AS $$
DECLARE
    name text;
BEGIN
    -- Referenced tables before the tables that reference them.
    FOREACH name IN ARRAY ARRAY['saedb_meta', 'load_errors', 'sae_models', 'sae_encoder', 'sae_decoder', 'feature_labels', 'label_controls',
                                'feature_cooccurrence', 'feature_families', 'family_members', 'scaling_runs', 'eval_runs',
                                'eval_results', 'llm_responses', 'llm_runs', 'feature_matches'] LOOP
        IF to_regclass(name) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass(name)) THEN
            PERFORM create_reference_table(name);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'papers'::regclass) THEN
        ALTER TABLE papers DROP CONSTRAINT IF EXISTS papers_arxiv_id_key;
        PERFORM create_distributed_table('papers', 'doc_id');
        PERFORM create_distributed_table('paper_keys', 'arxiv_id');
    END IF;
    FOREACH name IN ARRAY ARRAY['sae_codes', 'embeddings', 'model_holdout'] LOOP
        IF to_regclass(name) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass(name)) THEN
            PERFORM create_distributed_table(name, 'doc_id', colocate_with => 'papers');
        END IF;
    END LOOP;
END $$;

CALL saedb_distribute_tables();

-- Workers run the shards' HNSW scans in their own sessions, which take the database's
-- settings, not the coordinator session's (schema.sql sets them on the coordinator).
SELECT run_command_on_workers(format('ALTER DATABASE %I SET hnsw.ef_search = 200', current_database()));
SELECT run_command_on_workers(format('ALTER DATABASE %I SET hnsw.iterative_scan = relaxed_order', current_database()));
