-- saedb core schema for DuckDB (embedded default). Applied idempotently on every connect.
-- The embeddings table depends on the embedder's dimension: see embeddings.sql (rows carry
-- their content hash since issue 35; DuckDBBackend.upgrade_tables adds it to older files).

CREATE TABLE IF NOT EXISTS saedb_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE SEQUENCE IF NOT EXISTS papers_doc_id_seq START 1;

-- One row per document (arXiv paper). doc_id is the compact join key used by codes.
CREATE TABLE IF NOT EXISTS papers (
    doc_id     BIGINT PRIMARY KEY DEFAULT nextval('papers_doc_id_seq'),
    arxiv_id   VARCHAR NOT NULL UNIQUE,
    title      VARCHAR NOT NULL,
    abstract   VARCHAR NOT NULL,
    categories VARCHAR[] NOT NULL,
    subjects   VARCHAR[] NOT NULL,
    published  DATE,
    year       INTEGER,
    corpus     VARCHAR NOT NULL
);

-- Rows the loader could not accept; counted and kept, never dropped silently.
CREATE TABLE IF NOT EXISTS load_errors (
    source    VARCHAR NOT NULL,
    line      BIGINT NOT NULL,
    reason    VARCHAR NOT NULL,
    raw       VARCHAR,
    logged_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (source, line)
);

-- One row per SAE model version. A version is written in one transaction and is
-- published with status 'ready' in that same transaction.
CREATE TABLE IF NOT EXISTS sae_models (
    model_id   INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    version    INTEGER NOT NULL,
    embedder   VARCHAR NOT NULL,
    d_in       INTEGER NOT NULL,
    n_latents  INTEGER NOT NULL,
    k          INTEGER NOT NULL,
    n_documents INTEGER,
    status     VARCHAR NOT NULL CHECK (status IN ('building', 'ready', 'retired')),
    b_pre      FLOAT[] NOT NULL,
    metrics    JSON,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (name, version)
);

-- Training figures of each version (also in metrics): filled by the trainer, NULL for imports.
ALTER TABLE sae_models ADD COLUMN IF NOT EXISTS steps INTEGER;
ALTER TABLE sae_models ADD COLUMN IF NOT EXISTS normalised_mse DOUBLE;
ALTER TABLE sae_models ADD COLUMN IF NOT EXISTS dead_fraction DOUBLE;
ALTER TABLE sae_models ADD COLUMN IF NOT EXISTS enc_dec_cosine DOUBLE;
-- An untrained SAE of the same shape as the model it controls (the trainer's initialisation, same
-- seed, zero steps): labelled and scored beside it, never offered for steering (saedb.interp.untrained).
ALTER TABLE sae_models ADD COLUMN IF NOT EXISTS control_of INTEGER;

-- The documents a model's trainer held out (never in a training batch): labels are scored on them.
CREATE TABLE IF NOT EXISTS model_holdout (
    model_id   INTEGER NOT NULL,
    doc_id     BIGINT NOT NULL,
    PRIMARY KEY (model_id, doc_id)
);


CREATE TABLE IF NOT EXISTS sae_encoder (
    model_id   INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    w_enc      FLOAT[] NOT NULL,
    b_lat      FLOAT NOT NULL,
    PRIMARY KEY (model_id, feature_id)
);

CREATE TABLE IF NOT EXISTS sae_decoder (
    model_id   INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    w_dec      FLOAT[] NOT NULL,
    PRIMARY KEY (model_id, feature_id)
);

-- Sparse codes in long form: one row per active feature of a document. Read through the view
-- sae_codes below, which refuses to answer while they are behind the embeddings table.
CREATE TABLE IF NOT EXISTS sae_code_rows (
    model_id   INTEGER NOT NULL,
    doc_id     BIGINT NOT NULL,
    feature_id INTEGER NOT NULL,
    activation FLOAT NOT NULL
);

-- Every document a model's codes were written for (a document on which no feature fires too),
-- with the content hash of the embedding they were computed from: written in the transaction
-- that writes the codes, so the codes are those of the table exactly when these rows are the
-- table's (doc id, hash) pairs. DuckDB has no triggers: a plain client's INSERT, UPDATE or
-- DELETE on embeddings (or on an attached table) makes them differ until `saedb encode`.
CREATE TABLE IF NOT EXISTS coded_documents (
    model_id       INTEGER NOT NULL,
    doc_id         BIGINT NOT NULL,
    embedding_hash UBIGINT NOT NULL
);

-- Whether each published model's codes are those of the embeddings table as it is now: the same
-- number of documents and the same sum of hash(doc id, content hash) (a rewritten, removed, added
-- or swapped vector changes it). One scan of each table's two integer columns: 2-4 ms at 1M rows.
CREATE OR REPLACE VIEW code_status AS
SELECT m.model_id, coalesce(c.n, 0) AS coded_documents, e.n AS documents,
       coalesce(c.n, 0) = e.n AND coalesce(c.stamp, 0) = e.stamp AS current
FROM sae_models m
CROSS JOIN (SELECT count(*) AS n, coalesce(sum(hash(doc_id, embedding_hash)), 0) AS stamp FROM embeddings) e
LEFT JOIN (SELECT model_id, count(*) AS n, sum(hash(doc_id, embedding_hash)) AS stamp FROM coded_documents GROUP BY model_id) c
       ON c.model_id = m.model_id
WHERE m.status = 'ready';

-- The codes, as every view and query reads them: an error naming `saedb encode` while any
-- published model's codes are behind the table, never a stale answer. (DuckDB evaluates the
-- check for every model whatever a query filters on, so one model behind stops them all.)
CREATE OR REPLACE VIEW sae_codes AS
SELECT model_id, doc_id, feature_id, activation FROM sae_code_rows
WHERE (SELECT CASE WHEN bool_and(current) IS NOT FALSE THEN TRUE ELSE error(
           'the codes of model ' || string_agg(CAST(model_id AS VARCHAR), ', ' ORDER BY model_id) FILTER (WHERE NOT current)
           || ' are behind the embeddings table (documents added, rewritten or removed since they were encoded): '
           || 'run `saedb encode` to bring them up to date') END
       FROM code_status);

-- Automated interpretability: one label per feature and labeller, with the predictor's
-- scores on held-out examples (Pearson correlation and F1) and the feature's density.
CREATE TABLE IF NOT EXISTS feature_labels (
    model_id   INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    labeller   VARCHAR NOT NULL,
    label      VARCHAR NOT NULL,
    pearson    DOUBLE,
    f1         DOUBLE,
    density    DOUBLE NOT NULL,
    labelled_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model_id, feature_id, labeller)
);
-- The paper's clean filter (f1 >= 0.8, pearson >= 0.8, density < 0.2, no vague label, one feature per
-- label): set for all labels of a model and labeller after each labelling run.
ALTER TABLE feature_labels ADD COLUMN IF NOT EXISTS clean BOOLEAN;
-- Whether pearson and f1 were scored on the trainer's held-out documents (FALSE: on the activation
-- ranks 6-8 of a model with no held-out split, as in the paper).
ALTER TABLE feature_labels ADD COLUMN IF NOT EXISTS held_out BOOLEAN;
-- The label's round trip (saedb.interp.roundtrip): the rank of the feature among the SAE codes of
-- the label's own embedding (1 = strongest; NULL: not among its k active features, or not measured)
-- and the cosine of that embedding to the feature's decoder row (NULL: the embedder cannot run here).
ALTER TABLE feature_labels ADD COLUMN IF NOT EXISTS roundtrip_rank INTEGER;
ALTER TABLE feature_labels ADD COLUMN IF NOT EXISTS decoder_cosine DOUBLE;

-- The shuffled-label control of each model and labeller (saedb interp): a labeller whose own labels
-- score no better than shuffled ones (pearson_margin <= 0) has its labels kept but not offered:
-- feature_best_labels leaves them out, so steering by label and families never use them.
CREATE TABLE IF NOT EXISTS label_controls (
    model_id       INTEGER NOT NULL,
    labeller       VARCHAR NOT NULL,
    features       INTEGER NOT NULL,
    pearson_margin DOUBLE NOT NULL,
    f1_margin      DOUBLE NOT NULL,
    checked_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model_id, labeller)
);


-- Documents in which both features fire (feature_i <= feature_j; the diagonal counts one feature).
-- Millions of rows per model and only scanned, so no index (DuckDB's zone maps suffice).
CREATE TABLE IF NOT EXISTS feature_cooccurrence (
    model_id  INTEGER NOT NULL,
    feature_i INTEGER NOT NULL,
    feature_j INTEGER NOT NULL,
    n_docs    BIGINT NOT NULL
);

-- Feature families: a root feature and its descendants in the maximum spanning tree of the
-- co-occurrence graph (edges from denser to sparser features).
CREATE TABLE IF NOT EXISTS feature_families (
    model_id     INTEGER NOT NULL,
    family_id    INTEGER NOT NULL,
    root_feature INTEGER NOT NULL,
    iteration    INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    label        VARCHAR NOT NULL,
    PRIMARY KEY (model_id, family_id)
);
-- Family name scores (the predictor on the family's examples) and the parts of the paper's family
-- statistics, summed by the family_stats view: M = C / min(C_ii, C_jj) over member pairs (in block),
-- member x other clean feature (off block), and the same for a random set of equal size.
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS f1 DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS pearson DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS cooccurrence_ratio DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS in_block_sum DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS in_block_n BIGINT;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS off_block_sum DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS off_block_n BIGINT;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS random_in_block_sum DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS random_in_block_n BIGINT;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS random_off_block_sum DOUBLE;
ALTER TABLE feature_families ADD COLUMN IF NOT EXISTS random_off_block_n BIGINT;


CREATE TABLE IF NOT EXISTS family_members (
    model_id   INTEGER NOT NULL,
    family_id  INTEGER NOT NULL,
    feature_id INTEGER NOT NULL,
    parent_id  INTEGER,
    depth      INTEGER NOT NULL,
    PRIMARY KEY (model_id, family_id, feature_id)
);

-- Latest published version of a model name: sae_encode(e, sae_model_id('astro')). An unknown
-- name is an error (a NULL would make every function of the query return NULL silently).
CREATE OR REPLACE MACRO sae_model_id(model_name) AS coalesce((
    SELECT max(model_id) FROM sae_models WHERE name = model_name AND status = 'ready'
), error('sae_model_id: no published model named ''' || coalesce(model_name, 'NULL') || ''''));

-- One row per training run of a scaling grid (saedb grid): the data behind L ∝ n^α.
CREATE TABLE IF NOT EXISTS scaling_runs (
    grid           VARCHAR NOT NULL,
    k              INTEGER NOT NULL,
    n_latents      INTEGER NOT NULL,
    steps          INTEGER NOT NULL,
    samples        INTEGER NOT NULL,
    train_flops    DOUBLE NOT NULL,
    normalised_mse DOUBLE NOT NULL,
    dead_fraction  DOUBLE NOT NULL,
    l0             DOUBLE NOT NULL,
    seconds        DOUBLE NOT NULL,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (grid, k, n_latents)
);
-- Databases from before the step budget counted epochs.
ALTER TABLE scaling_runs DROP COLUMN IF EXISTS epochs;
ALTER TABLE scaling_runs ADD COLUMN IF NOT EXISTS steps INTEGER;


-- Steering evaluations (saedb eval): one row per run, and per run one row per method and strengths
-- (NULL strengths: query rewriting). Accuracies are the judge's 5-way choices, chance 0.2.
CREATE SEQUENCE IF NOT EXISTS eval_runs_run_id_seq START 1;
CREATE TABLE IF NOT EXISTS eval_runs (
    run_id     INTEGER PRIMARY KEY DEFAULT nextval('eval_runs_run_id_seq'),
    model_id   INTEGER NOT NULL,
    judge      VARCHAR NOT NULL,
    rewriter   VARCHAR NOT NULL,
    queries    VARCHAR NOT NULL,
    n_queries  INTEGER NOT NULL,
    seed       INTEGER NOT NULL,
    grid       VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS eval_results (
    run_id        INTEGER NOT NULL,
    method        VARCHAR NOT NULL,
    a_up          DOUBLE,
    a_down        DOUBLE,
    n_cases       INTEGER NOT NULL,
    cosine        DOUBLE NOT NULL,
    up_accuracy   DOUBLE NOT NULL,
    down_accuracy DOUBLE NOT NULL,
    unanswered    INTEGER NOT NULL
);

-- Replies of LLM endpoints by model and prompt hash (saedb.llm.ResponseCache): a rerun or a
-- resumed run asks nothing it has asked before.
CREATE TABLE IF NOT EXISTS llm_responses (
    model             VARCHAR NOT NULL,
    prompt_sha        VARCHAR NOT NULL,
    reply             VARCHAR NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model, prompt_sha)
);

-- What each run of an LLM step cost and how well the model kept to the protocol.
CREATE TABLE IF NOT EXISTS llm_runs (
    task              VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    protocol          VARCHAR NOT NULL,
    replies           INTEGER NOT NULL,
    malformed         INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    cached            INTEGER NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    seconds           DOUBLE NOT NULL,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Feature lineage (saedb match A B): each feature's best match in another model by decoder
-- cosine, stored both ways (a row per feature of A toward B and per feature of B toward A).
CREATE TABLE IF NOT EXISTS feature_matches (
    model_id         INTEGER NOT NULL,
    feature_id       INTEGER NOT NULL,
    other_model_id   INTEGER NOT NULL,
    other_feature_id INTEGER NOT NULL,
    cosine           DOUBLE NOT NULL,
    PRIMARY KEY (model_id, other_model_id, feature_id)
);

-- The documents' metadata for the analytics' set predicates and columns (analytics.sql): papers'
-- columns here; in an attached workspace (created first, so kept) the user's table's.
CREATE VIEW IF NOT EXISTS document_metadata AS SELECT p.doc_id AS saedb_doc_id, p.* FROM papers p;
