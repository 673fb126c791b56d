-- saedb SQL functions on pgvector: sae_encode, sae_decode, steer, steer_many, sae_model_id.
-- Plain SQL/PL/pgSQL over the vector type, so they run on any managed Postgres with pgvector.
-- Results equal the numpy reference in saedb/sae.py (tests assert parity).

DO $$ BEGIN
    CREATE TYPE sae_feature AS (feature_id integer, activation real);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- The published model row, or a clear error for NULL / unknown / unpublished ids.
CREATE OR REPLACE FUNCTION sae_ready_model(fn text, model integer)
RETURNS sae_models LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE m sae_models;
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION '%: model is NULL', fn USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO m FROM sae_models WHERE model_id = model AND status = 'ready';
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: unknown model % (no published model with that id)', fn, model
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN m;
END $$;

-- Check an embedding argument against the model's input dimension.
CREATE OR REPLACE FUNCTION sae_check_embedding(fn text, embedding vector, m sae_models)
RETURNS void LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF embedding IS NULL THEN
        RAISE EXCEPTION '%: embedding is NULL', fn USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF vector_dims(embedding) <> m.d_in THEN
        RAISE EXCEPTION '%: embedding has % dimensions, model % expects %',
            fn, vector_dims(embedding), m.model_id, m.d_in USING ERRCODE = 'data_exception';
    END IF;
END $$;

-- Check feature ids against the model: every one must be in 0..n_latents-1.
CREATE OR REPLACE FUNCTION sae_check_features(fn text, features integer[], m sae_models)
RETURNS void LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE bad integer;
BEGIN
    SELECT f INTO bad FROM unnest(features) f WHERE f IS NULL OR f NOT BETWEEN 0 AND m.n_latents - 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: feature % does not exist (model % has features 0..%)',
            fn, coalesce(bad::text, 'NULL'), m.model_id, m.n_latents - 1 USING ERRCODE = 'data_exception';
    END IF;
END $$;

-- Latest published version of a model name.
-- An unknown name is an error (a NULL would make every function of the query return NULL).
CREATE OR REPLACE FUNCTION sae_model_id(model_name text)
RETURNS integer LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    found integer := (SELECT max(model_id) FROM sae_models WHERE name = model_name AND status = 'ready');
BEGIN
    IF found IS NULL THEN
        RAISE EXCEPTION 'sae_model_id: no published model named %', quote_literal(coalesce(model_name, 'NULL'))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN found;
END $$;

-- ReLU(TopK(W_enc (x - b_pre) + b_lat)) as (feature_id, activation) pairs,
-- sorted by activation descending (ties by feature id); inactive latents omitted.
CREATE OR REPLACE FUNCTION sae_encode(embedding vector, model integer)
RETURNS sae_feature[] LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('sae_encode', model);
    centred vector;
    codes sae_feature[];
BEGIN
    PERFORM sae_check_embedding('sae_encode', embedding, m);
    centred := embedding - m.b_pre;
    SELECT coalesce(array_agg(ROW(t.feature_id, t.activation)::sae_feature
                              ORDER BY t.activation DESC, t.feature_id), '{}')
      INTO codes
      FROM (SELECT e.feature_id, (e.b_lat - (e.w_enc <#> centred))::real AS activation
              FROM sae_encoder e
             WHERE e.model_id = model
             ORDER BY activation DESC, e.feature_id
             LIMIT m.k) t
     WHERE t.activation > 0;
    IF EXISTS (SELECT 1 FROM unnest(codes) c WHERE c.activation = 'Infinity') THEN
        RAISE EXCEPTION 'sae_encode: activations overflow: the embedding''s values are too large' USING ERRCODE = 'data_exception';
    END IF;
    RETURN codes;
END $$;

-- Scale a decoder row: strength * W_dec[feature] (pgvector has no scalar product).
CREATE OR REPLACE FUNCTION sae_scaled(direction vector, strength real)
RETURNS vector LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT direction * array_fill(strength, ARRAY[vector_dims(direction)])::vector
$$;

-- b_pre + sum_i activation_i * W_dec[feature_i]
CREATE OR REPLACE FUNCTION sae_decode(codes sae_feature[], model integer)
RETURNS vector LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('sae_decode', model);
    total vector;
BEGIN
    IF codes IS NULL THEN
        RAISE EXCEPTION 'sae_decode: codes are NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(codes) c WHERE c IS NULL OR c.feature_id IS NULL OR c.activation IS NULL) THEN
        RAISE EXCEPTION 'sae_decode: codes contain a NULL feature_id or activation' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(codes) c WHERE c.activation IN ('NaN', 'Infinity', '-Infinity')) THEN
        RAISE EXCEPTION 'sae_decode: activation is NaN or infinite' USING ERRCODE = 'data_exception';
    END IF;
    PERFORM sae_check_features('sae_decode', ARRAY(SELECT c.feature_id FROM unnest(codes) c), m);
    SELECT sum(sae_scaled(d.w_dec, c.activation)) INTO total
      FROM unnest(codes) c JOIN sae_decoder d ON d.model_id = model AND d.feature_id = c.feature_id;
    RETURN CASE WHEN total IS NULL THEN m.b_pre ELSE m.b_pre + total END;
END $$;

-- Features and their numbers (strengths or fractions) for one steering call: non-empty, flat,
-- as many numbers as features, every feature one of the model's.
CREATE OR REPLACE FUNCTION sae_check_steering(fn text, features integer[], amounts double precision[], what text, m sae_models)
RETURNS void LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF features IS NULL OR amounts IS NULL OR cardinality(features) = 0 THEN
        RAISE EXCEPTION '%: features and % must be non-empty', fn, what USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF array_ndims(features) > 1 OR array_ndims(amounts) > 1 THEN
        RAISE EXCEPTION '%: features and % must be one-dimensional arrays', fn, what USING ERRCODE = 'data_exception';
    END IF;
    IF cardinality(features) <> cardinality(amounts) THEN
        RAISE EXCEPTION '%: % features but % %', fn, cardinality(features), cardinality(amounts), what
            USING ERRCODE = 'data_exception';
    END IF;
    PERFORM sae_check_features(fn, features, m);
END $$;

-- embedding + sum_i strengths_i * W_dec[features_i]: steer along a family of features.
CREATE OR REPLACE FUNCTION steer_many(embedding vector, features integer[], strengths double precision[], model integer)
RETURNS vector LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('steer', model);
    direction vector;
BEGIN
    PERFORM sae_check_embedding('steer', embedding, m);
    PERFORM sae_check_steering('steer', features, strengths, 'strengths', m);
    IF EXISTS (SELECT 1 FROM unnest(strengths) s WHERE s IS NULL OR s = 'NaN' OR s IN ('Infinity', '-Infinity')) THEN
        RAISE EXCEPTION 'steer: steering strength is NULL, NaN or infinite' USING ERRCODE = 'data_exception';
    END IF;
    SELECT sum(sae_scaled(d.w_dec, s.strength::real)) INTO direction
      FROM unnest(features, strengths) AS s(feature_id, strength)
      JOIN sae_decoder d ON d.model_id = model AND d.feature_id = s.feature_id;
    RETURN embedding + direction;
END $$;

-- embedding + strength * W_dec[feature]
CREATE OR REPLACE FUNCTION steer(embedding vector, feature integer, strength double precision, model integer)
RETURNS vector LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT steer_many(embedding, ARRAY[feature], ARRAY[strength], model)
$$;

-- The unit vector a fraction of the angle from embedding toward direction (a negative fraction:
-- toward -direction). saedb.sae.toward is the reference; computed in double precision.
CREATE OR REPLACE FUNCTION sae_toward(fn text, embedding vector, direction vector, fraction double precision)
RETURNS vector LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    t double precision := abs(fraction);
    sgn double precision := sign(fraction);
    nx double precision;
    nd double precision;
    c double precision;
    angle double precision;
    s double precision;
BEGIN
    IF fraction IS NULL OR fraction = 'NaN' OR fraction < -1 OR fraction > 1 THEN
        RAISE EXCEPTION '%: steering fraction must be between -1 and 1, got %', fn, coalesce(fraction::text, 'NULL')
            USING ERRCODE = 'data_exception';
    END IF;
    SELECT sqrt(sum(a::float8 * a)), sqrt(sum(b::float8 * b)), sum(a::float8 * b) INTO nx, nd, c
      FROM unnest(embedding::real[], direction::real[]) u(a, b);
    IF nx = 0 THEN
        RAISE EXCEPTION '%: cannot steer a zero vector toward a direction', fn USING ERRCODE = 'data_exception';
    END IF;
    c := greatest(-1, least(1, sgn * c / (nx * nd)));
    angle := acos(c);
    s := sin(angle);
    IF s < 1e-7 THEN
        IF c < 0 AND t > 0 THEN
            RAISE EXCEPTION '%: the query points exactly away from the steering direction: no way toward it is shortest', fn
                USING ERRCODE = 'data_exception';
        END IF;
        RETURN (SELECT array_agg((a / nx)::real ORDER BY i) FROM unnest(embedding::real[]) WITH ORDINALITY u(a, i))::vector;
    END IF;
    RETURN (SELECT array_agg(((sin((1 - t) * angle) * a / nx + sin(t * angle) * sgn * b / nd) / s)::real ORDER BY i)
              FROM unnest(embedding::real[], direction::real[]) WITH ORDINALITY u(a, b, i))::vector;
END $$;

-- For each feature in turn, the fraction of the angle toward its decoder direction: the steering
-- scale that means the same for every query and feature (0.5: equally close to the query and it).
CREATE OR REPLACE FUNCTION steer_toward_many(embedding vector, features integer[], fractions double precision[], model integer)
RETURNS vector LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('steer_toward', model);
    steered vector := embedding;
BEGIN
    PERFORM sae_check_embedding('steer_toward', embedding, m);
    PERFORM sae_check_steering('steer_toward', features, fractions, 'fractions', m);
    FOR i IN 1 .. cardinality(features) LOOP
        steered := sae_toward('steer_toward', steered,
                              (SELECT w_dec FROM sae_decoder WHERE model_id = model AND feature_id = features[i]), fractions[i]);
    END LOOP;
    RETURN steered;
END $$;

CREATE OR REPLACE FUNCTION steer_toward(embedding vector, feature integer, fraction double precision, model integer)
RETURNS vector LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT steer_toward_many(embedding, ARRAY[feature], ARRAY[fraction], model)
$$;

-- The fraction of the angle toward a family's direction: its members' summed decoder rows.
CREATE OR REPLACE FUNCTION steer_toward_family(embedding vector, family integer, fraction double precision, model integer)
RETURNS vector LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('steer_toward_family', model);
    direction vector;
BEGIN
    PERFORM sae_check_embedding('steer_toward_family', embedding, m);
    SELECT sum(d.w_dec) INTO direction FROM family_members f
      JOIN sae_decoder d ON d.model_id = f.model_id AND d.feature_id = f.feature_id
     WHERE f.model_id = model AND f.family_id = family;
    IF direction IS NULL THEN
        RAISE EXCEPTION 'steer_toward_family: model % has no family %', model, coalesce(family::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN sae_toward('steer_toward_family', embedding, direction, fraction);
END $$;

-- The concept's feature by saedb.concepts' rule without its embedding step (SQL has no embedder
-- here): the feature whose offered label is the text (case-insensitive), else whose label contains
-- it; clean labels first, then the label's decoder cosine, Pearson, feature id. Never a feature of
-- an untrained control model.
CREATE OR REPLACE FUNCTION sae_feature_by_label(label_text text, model integer)
RETURNS integer LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('steer_label', model);
    found_feature integer;
BEGIN
    IF label_text IS NULL OR btrim(label_text) = '' THEN
        RAISE EXCEPTION 'steer_label: label is empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF m.control_of IS NOT NULL THEN
        RAISE EXCEPTION 'steer_label: model % is the untrained control of model %; steer with a trained model',
            model, m.control_of USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT feature_id INTO found_feature FROM feature_best_labels
     WHERE model_id = model AND strpos(lower(label), lower(btrim(label_text))) > 0
     ORDER BY lower(label) = lower(btrim(label_text)) DESC, clean DESC, decoder_cosine DESC NULLS LAST,
              pearson DESC NULLS LAST, feature_id LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'steer_label: no feature of model % is labelled like %', model, quote_literal(label_text)
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN found_feature;
END $$;

-- embedding + strength * W_dec[the feature labelled like label_text]
CREATE OR REPLACE FUNCTION steer_label(embedding vector, label_text text, strength double precision, model integer)
RETURNS vector LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT steer(embedding, sae_feature_by_label(label_text, model), strength, model)
$$;

-- embedding + strength * unit(sum of the family members' decoder rows)
CREATE OR REPLACE FUNCTION steer_family(embedding vector, family integer, strength double precision, model integer)
RETURNS vector LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m sae_models := sae_ready_model('steer_family', model);
    members integer[];
    norm double precision;
BEGIN
    members := ARRAY(SELECT feature_id FROM family_members WHERE model_id = model AND family_id = family ORDER BY feature_id);
    IF cardinality(members) = 0 THEN
        RAISE EXCEPTION 'steer_family: model % has no family %', model, coalesce(family::text, 'NULL')
            USING ERRCODE = 'no_data_found';
    END IF;
    SELECT vector_norm(sum(w_dec)) INTO norm FROM sae_decoder WHERE model_id = model AND feature_id = ANY(members);
    RETURN steer_many(embedding, members, array_fill(strength / norm, ARRAY[cardinality(members)]), model);
END $$;

-- Codes for the documents that have embeddings and no codes for a model yet (CALL saedb_encode_new(3)).
CREATE OR REPLACE PROCEDURE saedb_encode_new(model integer)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sae_ready_model('saedb_encode_new', model);
    LOCK TABLE sae_models IN SHARE ROW EXCLUSIVE MODE;  -- the publishers' lock: one writer of codes at a time
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        -- Citus refuses to update sae_models (a reference table) after a parallel write to the shards.
        SET LOCAL citus.multi_shard_modify_mode = 'sequential';
    END IF;
    WITH pending AS (
        SELECT e.doc_id, e.embedding FROM embeddings e
        WHERE NOT EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = model AND c.doc_id = e.doc_id)
    ), written AS (
        INSERT INTO sae_codes (model_id, doc_id, feature_id, activation)
        SELECT model, p.doc_id, f.feature_id, f.activation
        FROM pending p CROSS JOIN LATERAL unnest(sae_encode(p.embedding, model)) f
        RETURNING doc_id
    )
    UPDATE sae_models SET n_documents = coalesce(n_documents, 0) + (SELECT count(DISTINCT doc_id) FROM written)
    WHERE model_id = model;
END $$;

-- Inserted rows are encoded by every published model in the writer's statement, as an index
-- takes new rows (one statement-level trigger: a bulk COPY costs one query per statement). A
-- writer that encodes afterwards in batches of its own (saedb's loader, with numpy) sets
-- saedb.encode_later = on for its session: its rows are then pending until `saedb encode`.
CREATE OR REPLACE FUNCTION saedb_encode_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('saedb.encode_later', true), '') <> 'on' THEN
        PERFORM saedb_encode_documents(ARRAY(SELECT doc_id FROM inserted));
    END IF;
    RETURN NULL;
END $$;

-- Codes follow the embeddings table as an index does, for every published model, in the writing
-- statement's own transaction (statement-level triggers: one pass per statement, not per row).
-- The codes of documents that left (a DELETE) or changed (an UPDATE of a vector) are removed,
-- with their share of the co-occurrence counts and of n_documents.
CREATE OR REPLACE FUNCTION saedb_document_pairs(ids bigint[])
RETURNS TABLE (model_id integer, i integer, j integer, n bigint) LANGUAGE sql STABLE AS $$
    SELECT a.model_id, a.feature_id, b.feature_id, count(*)
    FROM sae_codes a JOIN sae_codes b ON b.model_id = a.model_id AND b.doc_id = a.doc_id AND b.feature_id >= a.feature_id
    WHERE a.doc_id = ANY(ids) GROUP BY a.model_id, a.feature_id, b.feature_id
$$;

CREATE OR REPLACE FUNCTION saedb_forget_documents(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE feature_cooccurrence f SET n_docs = f.n_docs - p.n FROM saedb_document_pairs(ids) p
    WHERE f.model_id = p.model_id AND f.feature_i = p.i AND f.feature_j = p.j;
    DELETE FROM feature_cooccurrence f USING saedb_document_pairs(ids) p
    WHERE f.model_id = p.model_id AND f.feature_i = p.i AND f.feature_j = p.j AND f.n_docs <= 0;
    WITH removed AS (
        DELETE FROM sae_codes WHERE doc_id = ANY(ids) RETURNING model_id, doc_id
    ), per_model AS (
        SELECT model_id, count(DISTINCT doc_id) AS n FROM removed GROUP BY model_id
    )
    UPDATE sae_models s SET n_documents = coalesce(s.n_documents, 0) - p.n FROM per_model p WHERE s.model_id = p.model_id;
END $$;

-- ... and rewritten vectors are encoded again by every published model, their pairs counted where
-- the model has co-occurrence counts.
CREATE OR REPLACE FUNCTION saedb_encode_documents(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH written AS (
        INSERT INTO sae_codes (model_id, doc_id, feature_id, activation)
        SELECT m.model_id, e.doc_id, f.feature_id, f.activation
        FROM sae_models m CROSS JOIN embeddings e CROSS JOIN LATERAL unnest(sae_encode(e.embedding, m.model_id)) f
        WHERE m.status = 'ready' AND e.doc_id = ANY(ids)
        RETURNING model_id, doc_id
    ), per_model AS (
        SELECT model_id, count(DISTINCT doc_id) AS n FROM written GROUP BY model_id
    )
    UPDATE sae_models s SET n_documents = coalesce(s.n_documents, 0) + p.n FROM per_model p WHERE s.model_id = p.model_id;
    INSERT INTO feature_cooccurrence (model_id, feature_i, feature_j, n_docs)
    SELECT p.model_id, p.i, p.j, p.n FROM saedb_document_pairs(ids) p
    WHERE EXISTS (SELECT 1 FROM feature_cooccurrence c WHERE c.model_id = p.model_id)
    ON CONFLICT (model_id, feature_i, feature_j) DO UPDATE SET n_docs = feature_cooccurrence.n_docs + excluded.n_docs;
END $$;

CREATE OR REPLACE FUNCTION saedb_codes_follow_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM saedb_forget_documents(ARRAY(SELECT doc_id FROM removed));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION saedb_codes_follow_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed bigint[] := ARRAY(SELECT o.doc_id FROM old_rows o LEFT JOIN new_rows n USING (doc_id)
                              WHERE n.embedding IS DISTINCT FROM o.embedding);  -- a changed doc_id: its old id left
    arrived bigint[] := ARRAY(SELECT n.doc_id FROM new_rows n LEFT JOIN old_rows o USING (doc_id)
                              WHERE o.embedding IS DISTINCT FROM n.embedding);
BEGIN
    IF cardinality(changed) > 0 OR cardinality(arrived) > 0 THEN
        PERFORM saedb_forget_documents(changed);
        PERFORM saedb_encode_documents(arrived);
    END IF;
    RETURN NULL;
END $$;

-- A model row deleted by plain SQL takes every row of it along, as `saedb drop` does: the tables
-- with a foreign key cascade; these have none (sae_codes: per-row checks would dominate the
-- write-back of codes) and are emptied of the deleted models here, in the same statement.
CREATE OR REPLACE FUNCTION saedb_models_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids integer[] := ARRAY(SELECT model_id FROM removed);
    name text;
BEGIN
    DELETE FROM feature_matches WHERE model_id = ANY(ids) OR other_model_id = ANY(ids);
    FOREACH name IN ARRAY ARRAY['sae_codes', 'model_holdout', 'family_members', 'eval_runs'] LOOP
        EXECUTE format('DELETE FROM %I WHERE model_id = ANY($1)', name) USING ids;
    END LOOP;
    RETURN NULL;
END $$;

DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        CREATE OR REPLACE TRIGGER sae_models_deleted AFTER DELETE ON sae_models
            REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION saedb_models_deleted();
    END IF;
END $$;

-- Called here and by embeddings.sql once the embeddings table exists (not on an attached table's
-- view, nor on Citus: citus.sql says why).
CREATE OR REPLACE PROCEDURE saedb_create_encode_trigger()
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('embeddings')) = 'r'
       AND NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        CREATE OR REPLACE TRIGGER embeddings_auto_encode AFTER INSERT ON embeddings
            REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION saedb_encode_inserted();
        -- (transition tables cannot go with a column list: every UPDATE fires, and compares the vectors)
        CREATE OR REPLACE TRIGGER embeddings_codes_follow_updated AFTER UPDATE ON embeddings
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION saedb_codes_follow_updated();
        CREATE OR REPLACE TRIGGER embeddings_codes_follow_deleted AFTER DELETE ON embeddings
            REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION saedb_codes_follow_deleted();
    END IF;
END $$;

CALL saedb_create_encode_trigger();
