-- Comparative analytics over a model's codes: the set-returning twins of sql/duckdb/analytics.sql's
-- table macros (same rows; the rules are stated there). Sets and columns are SQL over
-- document_metadata, run with the caller's rights: the reader role reads, nothing is written.

-- The ids of the documents of a set (a predicate over document_metadata) that the model has encoded.
CREATE OR REPLACE FUNCTION saedb_document_set(model integer, predicate text)
RETURNS bigint[] LANGUAGE plpgsql STABLE AS $$
DECLARE ids bigint[];
BEGIN
    EXECUTE format('SELECT coalesce(array_agg(DISTINCT m.saedb_doc_id), ''{}'') FROM document_metadata m WHERE (%s) '
                   'AND EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = $1 AND c.doc_id = m.saedb_doc_id)', predicate)
        INTO ids USING model;
    RETURN ids;
END $$;

CREATE OR REPLACE FUNCTION feature_enrichment(model integer, set_a text, set_b text)
RETURNS TABLE (model_id integer, feature_id integer, label text, a_docs bigint, a_total bigint, b_docs bigint,
               b_total bigint, a_share double precision, b_share double precision, log_odds double precision,
               log_odds_low double precision, log_odds_high double precision, p_value double precision,
               q_value double precision)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    m sae_models := sae_ready_model('feature_enrichment', model);
    a bigint[] := saedb_document_set(model, set_a);
    b bigint[] := saedb_document_set(model, coalesce(set_b, 'TRUE'));
    n_both bigint;
BEGIN
    IF set_b IS NULL THEN
        b := ARRAY(SELECT unnest(b) EXCEPT SELECT unnest(a));
    END IF;
    IF cardinality(a) = 0 THEN
        RAISE EXCEPTION 'feature_enrichment: set A (%) holds no document encoded by model %', set_a, model USING ERRCODE = 'no_data_found';
    END IF;
    IF cardinality(b) = 0 THEN
        RAISE EXCEPTION 'feature_enrichment: set B (%) holds no document encoded by model %', coalesce(set_b, 'the rest'), model
            USING ERRCODE = 'no_data_found';
    END IF;
    n_both := (SELECT count(*) FROM (SELECT unnest(a) INTERSECT SELECT unnest(b)) both_sets);
    IF n_both > 0 THEN
        RAISE EXCEPTION 'feature_enrichment: % documents are in both sets; give disjoint sets (add AND NOT (...) to one of them)', n_both
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH sets AS (
        SELECT unnest(a) AS doc_id, TRUE AS in_a UNION ALL SELECT unnest(b), FALSE
    ), counts AS (
        SELECT c.feature_id, count(*) FILTER (WHERE s.in_a) AS a_docs, count(*) FILTER (WHERE NOT s.in_a) AS b_docs
        FROM sae_codes c JOIN sets s ON s.doc_id = c.doc_id
        WHERE c.model_id = model
        GROUP BY c.feature_id
    ), tables AS (
        SELECT c.feature_id, c.a_docs, c.b_docs, cardinality(a)::bigint AS n_a, cardinality(b)::bigint AS n_b,
               cardinality(a)::bigint + cardinality(b) AS n, c.a_docs + c.b_docs AS k,
               greatest(0, c.a_docs + c.b_docs - cardinality(b)) AS lo, least(c.a_docs + c.b_docs, cardinality(a)) AS hi,
               cardinality(a)::double precision * (c.a_docs + c.b_docs) / (cardinality(a) + cardinality(b)) AS mean,
               ceil(sqrt(15.0 * least(cardinality(a), c.a_docs + c.b_docs, cardinality(b)))) + 2 AS width
        FROM counts c
    ), shapes AS (  -- one Fisher test per distinct table: features with the same counts get the same bits
        SELECT DISTINCT t.a_docs, t.b_docs, t.n_a, t.n, t.k, t.lo, t.hi, t.mean, t.width FROM tables t
    ), terms AS (
        SELECT w.a_docs, w.b_docs, w.x,
               lgamma(w.k + 1) - lgamma(w.x + 1) - lgamma(w.k - w.x + 1)
               + lgamma(w.n - w.k + 1) - lgamma(w.n_a - w.x + 1) - lgamma(w.n - w.k - w.n_a + w.x + 1) AS log_weight
        FROM (SELECT t.a_docs, t.b_docs, t.k, t.n, t.n_a, generate_series(greatest(t.lo, floor(t.mean - t.width))::bigint,
                                                                          least(t.hi, ceil(t.mean + t.width))::bigint) AS x FROM shapes t
              UNION
              SELECT t.a_docs, t.b_docs, t.k, t.n, t.n_a, generate_series(greatest(t.lo, t.a_docs - t.width)::bigint,
                                                                          least(t.hi, t.a_docs + t.width)::bigint) FROM shapes t
              UNION
              SELECT t.a_docs, t.b_docs, t.k, t.n, t.n_a, generate_series(greatest(t.lo, floor(2 * t.mean - t.a_docs - t.width))::bigint,
                                                                          least(t.hi, ceil(2 * t.mean - t.a_docs + t.width))::bigint) FROM shapes t) w
    ), weighted AS (
        SELECT r.a_docs, r.b_docs, r.x, r.log_weight,
               CASE WHEN r.log_weight - r.top >= -740 THEN exp(r.log_weight - r.top) ELSE 0 END AS weight
        FROM (SELECT q.*, max(q.log_weight) OVER (PARTITION BY q.a_docs, q.b_docs) AS top FROM terms q) r
    ), fisher AS (
        SELECT t.a_docs, t.b_docs,
               least(1.0, sum(CASE WHEN w.log_weight <= o.log_weight + 1e-7 THEN w.weight END)
                          / sum(w.weight)) AS p_value
        FROM shapes t
        JOIN weighted o ON o.a_docs = t.a_docs AND o.b_docs = t.b_docs AND o.x = t.a_docs
        JOIN weighted w ON w.a_docs = t.a_docs AND w.b_docs = t.b_docs
        GROUP BY t.a_docs, t.b_docs
    ), tested AS (
        SELECT t.*, f.p_value,
               ln((t.a_docs + 0.5) * (t.n_b - t.b_docs + 0.5) / ((t.b_docs + 0.5) * (t.n_a - t.a_docs + 0.5))) AS log_odds,
               sqrt(1 / (t.a_docs + 0.5) + 1 / (t.n_a - t.a_docs + 0.5) + 1 / (t.b_docs + 0.5) + 1 / (t.n_b - t.b_docs + 0.5)) AS log_odds_se,
               row_number() OVER (ORDER BY f.p_value, t.feature_id) AS p_rank, count(*) OVER () AS n_tested
        FROM tables t JOIN fisher f ON f.a_docs = t.a_docs AND f.b_docs = t.b_docs
    )
    SELECT model, x.feature_id, l.label, x.a_docs, x.n_a, x.b_docs, x.n_b,
           x.a_docs::double precision / x.n_a, x.b_docs::double precision / x.n_b,
           x.log_odds::double precision, (x.log_odds - 1.959963984540054 * x.log_odds_se)::double precision,
           (x.log_odds + 1.959963984540054 * x.log_odds_se)::double precision,
           x.p_value::double precision,
           least(1.0, min(x.p_value * x.n_tested / x.p_rank) OVER (ORDER BY x.p_rank DESC ROWS UNBOUNDED PRECEDING))::double precision
    FROM tested x
    LEFT JOIN feature_best_labels l ON l.model_id = model AND l.feature_id = x.feature_id
    ORDER BY 13, 10 DESC, 2;
END $$;

-- (document, value) pairs of a column expression over document_metadata, for the documents the
-- model has encoded (a set-returning expression, unnest(categories), gives several values).
CREATE OR REPLACE FUNCTION saedb_document_values(model integer, column_expression text)
RETURNS TABLE (doc_id bigint, value text) LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT DISTINCT v.doc_id, v.value FROM (SELECT m.saedb_doc_id AS doc_id, CAST((%s) AS text) AS value '
        'FROM document_metadata m) v WHERE v.value IS NOT NULL '
        'AND EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = $1 AND c.doc_id = v.doc_id)', column_expression) USING model;
END $$;

CREATE OR REPLACE FUNCTION feature_predictors(model integer, column_expression text)
RETURNS TABLE (model_id integer, value text, feature_id integer, label text, value_docs bigint, feature_docs bigint,
               both_docs bigint, "precision" double precision, recall double precision, f1 double precision,
               lift double precision, rank bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    m sae_models := sae_ready_model('feature_predictors', model);
    doc_ids bigint[];
    doc_values text[];
    n bigint;
BEGIN
    SELECT coalesce(array_agg(v.doc_id), '{}'), coalesce(array_agg(v.value), '{}'), count(DISTINCT v.doc_id)
      INTO doc_ids, doc_values, n FROM saedb_document_values(model, column_expression) v;
    IF n = 0 THEN
        RAISE EXCEPTION 'feature_predictors: % has no value on the documents encoded by model %', column_expression, model
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    WITH docs AS (SELECT * FROM unnest(doc_ids, doc_values) AS d(doc_id, value)),
    values_ AS (SELECT d.value, count(*) AS value_docs FROM docs d GROUP BY d.value),
    active AS (
        SELECT c.feature_id, c.doc_id FROM sae_codes c
        WHERE c.model_id = model AND c.doc_id IN (SELECT DISTINCT d.doc_id FROM docs d)
    ), features AS (SELECT a.feature_id, count(*) AS feature_docs FROM active a GROUP BY a.feature_id),
    pairs AS (
        SELECT d.value, a.feature_id, count(*) AS both_docs FROM active a JOIN docs d ON d.doc_id = a.doc_id
        GROUP BY d.value, a.feature_id
    ), scored AS (
        SELECT p.value, p.feature_id, v.value_docs, f.feature_docs, p.both_docs,
               p.both_docs::double precision / f.feature_docs AS prec,
               p.both_docs::double precision / v.value_docs AS rec,
               2.0::double precision * p.both_docs / (f.feature_docs + v.value_docs) AS f1_score,
               p.both_docs::double precision * n / (f.feature_docs::double precision * v.value_docs) AS lift_score
        FROM pairs p JOIN values_ v ON v.value = p.value JOIN features f ON f.feature_id = p.feature_id
    )
    SELECT model, s.value, s.feature_id, l.label, s.value_docs, s.feature_docs, s.both_docs,
           s.prec, s.rec, s.f1_score, s.lift_score,
           row_number() OVER (PARTITION BY s.value ORDER BY s.f1_score DESC, s.feature_id)
    FROM scored s
    LEFT JOIN feature_best_labels l ON l.model_id = model AND l.feature_id = s.feature_id
    ORDER BY 2, 12;
END $$;

CREATE OR REPLACE FUNCTION feature_slopes(model integer, column_expression text)
RETURNS TABLE (model_id integer, feature_id integer, label text, n_docs bigint, share double precision,
               slope double precision, slope_se double precision, slope_low double precision,
               slope_high double precision, z double precision, p_value double precision, q_value double precision)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    m sae_models := sae_ready_model('feature_slopes', model);
    doc_ids bigint[];
    xs double precision[];
    n bigint;
    n_docs_distinct bigint;
    n_not_finite bigint;
    mean_x double precision;
    sxx double precision;
BEGIN
    BEGIN
        SELECT coalesce(array_agg(v.doc_id), '{}'), coalesce(array_agg(v.value::double precision), '{}'), count(*),
               count(DISTINCT v.doc_id), avg(v.value::double precision)
          INTO doc_ids, xs, n, n_docs_distinct, mean_x FROM saedb_document_values(model, column_expression) v;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'feature_slopes: % is not numeric: %', column_expression, SQLERRM USING ERRCODE = 'invalid_text_representation';
    END;
    IF n < 30 THEN
        RAISE EXCEPTION 'feature_slopes: % has a value on % documents encoded by model %; at least 30 are needed',
            column_expression, n, model USING ERRCODE = 'no_data_found';
    END IF;
    IF n_docs_distinct < n THEN
        RAISE EXCEPTION 'feature_slopes: % has several values per document', column_expression USING ERRCODE = 'cardinality_violation';
    END IF;
    n_not_finite := (SELECT count(*) FROM unnest(xs) x WHERE x IN ('NaN', 'Infinity', '-Infinity'));
    IF n_not_finite > 0 THEN
        RAISE EXCEPTION 'feature_slopes: % is NaN or infinite on % documents; make those values NULL to leave the documents out',
            column_expression, n_not_finite USING ERRCODE = 'data_exception';
    END IF;
    sxx := (SELECT sum((x - mean_x) * (x - mean_x)) FROM unnest(xs) x);
    IF sxx = 0 THEN
        RAISE EXCEPTION 'feature_slopes: % has one value on every document', column_expression USING ERRCODE = 'data_exception';
    END IF;
    RETURN QUERY
    WITH centred AS (SELECT d.doc_id, d.x - mean_x AS dx FROM unnest(doc_ids, xs) AS d(doc_id, x)),
    per_feature AS (
        SELECT c.feature_id, count(*) AS active_docs, sum(x.dx) AS sxy
        FROM sae_codes c JOIN centred x ON x.doc_id = c.doc_id
        WHERE c.model_id = model
        GROUP BY c.feature_id
    ), fitted AS (
        SELECT f.feature_id, f.active_docs, f.sxy / sxx AS b,
               sqrt(greatest(0.0, f.active_docs - f.active_docs::double precision * f.active_docs / n - f.sxy * f.sxy / sxx)
                    / ((n - 2) * sxx)) AS se
        FROM per_feature f
    ), tested AS (
        SELECT f.*, CASE WHEN f.se > 0 THEN f.b / f.se END AS zz,
               CASE WHEN f.se > 0 THEN erfc(abs(f.b / f.se) / sqrt(2.0::double precision)) ELSE 1.0 END AS p
        FROM fitted f
    ), ranked AS (SELECT t.*, row_number() OVER (ORDER BY t.p, t.feature_id) AS p_rank, count(*) OVER () AS n_tested FROM tested t)
    SELECT model, r.feature_id, l.label, r.active_docs, r.active_docs::double precision / n, r.b, r.se,
           r.b - 1.959963984540054 * r.se, r.b + 1.959963984540054 * r.se, r.zz, r.p::double precision,
           least(1.0, min(r.p * r.n_tested / r.p_rank) OVER (ORDER BY r.p_rank DESC ROWS UNBOUNDED PRECEDING))::double precision
    FROM ranked r
    LEFT JOIN feature_best_labels l ON l.model_id = model AND l.feature_id = r.feature_id
    ORDER BY 11, 2;
END $$;
