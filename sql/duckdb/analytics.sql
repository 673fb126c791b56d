-- Comparative analytics over a model's codes, as table macros any DuckDB client can call (the
-- Postgres twins in sql/postgres/analytics.sql return the same rows; tests/test_analytics_sql.py).
-- Document sets and columns are SQL over document_metadata: papers' columns, or in an attached
-- workspace the user's own table's. A document counts only if the model has encoded it.

-- erfc(x) for x >= 0 (DuckDB has none), to a relative 1e-14: below 2 by the series
-- erf(x) = 2/sqrt(pi) e^-x^2 sum 2^n x^(2n+1)/(2n+1)!! (positive terms), from 2 by Laplace's
-- continued fraction erfc(x) = e^-x^2/sqrt(pi) / (x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (60 levels).
CREATE OR REPLACE MACRO saedb_erfc(x) AS CASE
    WHEN x >= 2 THEN (
        WITH RECURSIVE fraction(level, value) AS (
            SELECT 60, CAST(x AS DOUBLE)
            UNION ALL
            SELECT level - 1, x + (level / 2.0) / value FROM fraction WHERE level > 0)
        SELECT exp(-x * x) / (sqrt(pi()) * value) FROM fraction WHERE level = 0)
    WHEN x > 0 THEN 1 - 2 / sqrt(pi()) * exp(-x * x) * (
        SELECT sum(exp((2 * n + 1) * ln(x) + 2 * n * ln(2) + lgamma(n + 1) - lgamma(2 * n + 2)))
        FROM range(0, 60) r(n))
    ELSE 1.0 END;

-- The documents of a set (a predicate over document_metadata) that the model has encoded.
CREATE OR REPLACE MACRO saedb_document_set(model, predicate) AS TABLE
    SELECT DISTINCT m.saedb_doc_id AS doc_id
    FROM query('SELECT saedb_doc_id FROM document_metadata WHERE ' || predicate) m
    WHERE EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = model AND c.doc_id = m.saedb_doc_id);

-- Each feature's activity in set A against set B (NULL: every other encoded document): documents
-- active in each, shares, the log odds ratio of firing in A over B with a 95% Woolf interval (0.5
-- added to every cell, so a feature absent from one set has a finite ratio), Fisher's exact
-- two-sided p-value (scipy's rule: the tables no likelier than the one observed, likelihood within
-- a relative 1e-7 counted as equal) and the Benjamini-Hochberg q-value over the features tested
-- (those active in either set). Fisher's, not a two-proportion test, because most features are
-- sparse: a feature firing in 3 of 400 documents is outside any normal approximation. Tables that
-- far from the expected count that exp(-2t^2/m) < 1e-13 (Hoeffding) are left out of the sums
-- unless they lie as near the observed count or its mirror image: p is exact to 1e-12 absolute
-- plus lgamma's rounding (relative 1e-13 at 10^4 documents, 1e-9 at 10^6). Likelihoods are taken
-- relative to the likeliest table and as 0 below e^-740 (Postgres's exp raises on underflow and
-- overflow), so a p below 1e-308 is 0.
CREATE OR REPLACE MACRO feature_enrichment(model, set_a, set_b) AS TABLE
WITH model_row AS (
    SELECT coalesce(max(model_id), error('feature_enrichment: unknown model ' || coalesce(CAST(model AS VARCHAR), 'NULL')
                                         || ' (no published model with that id)')) AS model_id
    FROM sae_models WHERE model_id = model AND status = 'ready'
), a AS (SELECT doc_id FROM saedb_document_set(model, set_a)),
b AS (
    SELECT doc_id FROM saedb_document_set(model, coalesce(set_b, 'TRUE'))
    WHERE set_b IS NOT NULL OR doc_id NOT IN (SELECT doc_id FROM a)
), sizes AS (
    SELECT CASE WHEN model_row.model_id IS NULL THEN NULL
                WHEN n_a = 0 THEN error('feature_enrichment: set A (' || set_a || ') holds no document encoded by model ' || model)
                WHEN n_b = 0 THEN error('feature_enrichment: set B (' || coalesce(set_b, 'the rest') || ') holds no document encoded by model ' || model)
                WHEN n_both > 0 THEN error('feature_enrichment: ' || n_both || ' documents are in both sets; give disjoint sets (add AND NOT (...) to one of them)')
                ELSE n_a END AS n_a, n_b
    FROM (SELECT (SELECT count(*) FROM a) AS n_a, (SELECT count(*) FROM b) AS n_b,
                 (SELECT count(*) FROM a JOIN b USING (doc_id)) AS n_both), model_row
), counts AS (
    SELECT c.feature_id, count(a.doc_id) AS a_docs, count(b.doc_id) AS b_docs
    FROM sae_codes c LEFT JOIN a ON a.doc_id = c.doc_id LEFT JOIN b ON b.doc_id = c.doc_id
    WHERE c.model_id = model AND (a.doc_id IS NOT NULL OR b.doc_id IS NOT NULL)
    GROUP BY c.feature_id
), tables AS (
    SELECT c.feature_id, c.a_docs, c.b_docs, s.n_a, s.n_b,
           s.n_a + s.n_b AS n, c.a_docs + c.b_docs AS k,
           greatest(0, c.a_docs + c.b_docs - s.n_b) AS lo, least(c.a_docs + c.b_docs, s.n_a) AS hi,
           CAST(s.n_a AS DOUBLE) * (c.a_docs + c.b_docs) / (s.n_a + s.n_b) AS mean,
           ceil(sqrt(15.0 * least(s.n_a, c.a_docs + c.b_docs, s.n_b))) + 2 AS width
    FROM counts c, sizes s
), shapes AS (  -- one Fisher test per distinct table: features with the same counts get the same bits
    SELECT DISTINCT a_docs, b_docs, n_a, n, k, lo, hi, mean, width FROM tables
), terms AS (
    SELECT a_docs, b_docs, x,
           lgamma(k + 1) - lgamma(x + 1) - lgamma(k - x + 1)
           + lgamma(n - k + 1) - lgamma(n_a - x + 1) - lgamma(n - k - n_a + x + 1) AS log_weight
    FROM (SELECT a_docs, b_docs, k, n, n_a, unnest(range(CAST(greatest(lo, floor(mean - width)) AS BIGINT),
                                                         CAST(least(hi, ceil(mean + width)) AS BIGINT) + 1)) AS x FROM shapes
          UNION
          SELECT a_docs, b_docs, k, n, n_a, unnest(range(CAST(greatest(lo, a_docs - width) AS BIGINT),
                                                         CAST(least(hi, a_docs + width) AS BIGINT) + 1)) AS x FROM shapes
          UNION
          SELECT a_docs, b_docs, k, n, n_a, unnest(range(CAST(greatest(lo, floor(2 * mean - a_docs - width)) AS BIGINT),
                                                         CAST(least(hi, ceil(2 * mean - a_docs + width)) AS BIGINT) + 1)) AS x FROM shapes)
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
SELECT CAST(model AS INTEGER) AS model_id, CAST(x.feature_id AS INTEGER) AS feature_id, l.label,
       x.a_docs, x.n_a AS a_total, x.b_docs, x.n_b AS b_total,
       CAST(x.a_docs AS DOUBLE) / x.n_a AS a_share, CAST(x.b_docs AS DOUBLE) / x.n_b AS b_share,
       x.log_odds, x.log_odds - 1.959963984540054 * x.log_odds_se AS log_odds_low,
       x.log_odds + 1.959963984540054 * x.log_odds_se AS log_odds_high,
       x.p_value,
       least(1.0, min(x.p_value * x.n_tested / x.p_rank) OVER (ORDER BY x.p_rank DESC ROWS UNBOUNDED PRECEDING)) AS q_value
FROM tested x
LEFT JOIN feature_best_labels l ON l.model_id = model AND l.feature_id = x.feature_id
ORDER BY p_value, log_odds DESC, feature_id;

-- The (document, value) pairs of a column expression over document_metadata, for the documents
-- the model has encoded; a set-returning expression (unnest(categories)) gives several values.
CREATE OR REPLACE MACRO saedb_document_values(model, column_expression) AS TABLE
    SELECT DISTINCT v.doc_id, v.value
    FROM query('SELECT saedb_doc_id AS doc_id, CAST((' || column_expression || ') AS VARCHAR) AS value FROM document_metadata') v
    WHERE v.value IS NOT NULL
      AND EXISTS (SELECT 1 FROM sae_codes c WHERE c.model_id = model AND c.doc_id = v.doc_id);

-- For each value of a categorical column and each feature active on it: how well the feature
-- predicts the value among the documents that have one. precision = P(value | feature active),
-- recall = P(feature active | value), f1, lift = precision / P(value); rank 1 = the best f1.
CREATE OR REPLACE MACRO feature_predictors(model, column_expression) AS TABLE
WITH model_row AS (
    SELECT coalesce(max(model_id), error('feature_predictors: unknown model ' || coalesce(CAST(model AS VARCHAR), 'NULL')
                                         || ' (no published model with that id)')) AS model_id
    FROM sae_models WHERE model_id = model AND status = 'ready'
), docs AS (SELECT doc_id, value FROM saedb_document_values(model, column_expression)),
total AS (
    SELECT CASE WHEN max(model_row.model_id) IS NULL THEN NULL
                WHEN count(DISTINCT doc_id) = 0
                THEN error('feature_predictors: ' || column_expression || ' has no value on the documents encoded by model ' || model)
                ELSE count(DISTINCT doc_id) END AS n
    FROM model_row LEFT JOIN docs ON TRUE
), values_ AS (SELECT value, count(*) AS value_docs FROM docs GROUP BY value),
active AS (
    SELECT c.feature_id, c.doc_id FROM sae_codes c
    WHERE c.model_id = model AND c.doc_id IN (SELECT doc_id FROM docs)
), features AS (SELECT feature_id, count(*) AS feature_docs FROM active GROUP BY feature_id),
pairs AS (
    SELECT d.value, a.feature_id, count(*) AS both_docs FROM active a JOIN docs d USING (doc_id) GROUP BY d.value, a.feature_id
), scored AS (
    SELECT p.value, p.feature_id, v.value_docs, f.feature_docs, p.both_docs,
           CAST(p.both_docs AS DOUBLE) / f.feature_docs AS precision,
           CAST(p.both_docs AS DOUBLE) / v.value_docs AS recall,
           2.0 * p.both_docs / (f.feature_docs + v.value_docs) AS f1,
           CAST(p.both_docs AS DOUBLE) * t.n / (CAST(f.feature_docs AS DOUBLE) * v.value_docs) AS lift
    FROM pairs p JOIN values_ v USING (value) JOIN features f USING (feature_id), total t
)
SELECT CAST(model AS INTEGER) AS model_id, s.value, CAST(s.feature_id AS INTEGER) AS feature_id, l.label,
       s.value_docs, s.feature_docs, s.both_docs, s.precision, s.recall, s.f1, s.lift,
       row_number() OVER (PARTITION BY s.value ORDER BY s.f1 DESC, s.feature_id) AS rank
FROM scored s
LEFT JOIN feature_best_labels l ON l.model_id = model AND l.feature_id = s.feature_id
ORDER BY s.value, rank;

-- Each feature's linear trend along a numeric column (year): the least-squares slope of "the
-- feature fires" (0/1) on the column over the encoded documents that have a value, i.e. the change
-- in the share of documents it fires on per unit, with its standard error (scipy's linregress),
-- a 95% interval, z = slope / se, the two-sided p-value of z under the normal distribution (the
-- t distribution with n - 2 >= 1000 degrees of freedom differs by < 1e-3 relative; saedb refuses
-- fewer than 30 documents) and the Benjamini-Hochberg q-value over the features.
CREATE OR REPLACE MACRO feature_slopes(model, column_expression) AS TABLE
WITH model_row AS (
    SELECT coalesce(max(model_id), error('feature_slopes: unknown model ' || coalesce(CAST(model AS VARCHAR), 'NULL')
                                         || ' (no published model with that id)')) AS model_id
    FROM sae_models WHERE model_id = model AND status = 'ready'
), docs AS (SELECT doc_id, CAST(value AS DOUBLE) AS x FROM saedb_document_values(model, column_expression)),
stats AS (
    SELECT CASE WHEN max(model_row.model_id) IS NULL THEN NULL
                WHEN count(docs.doc_id) < 30 THEN error('feature_slopes: ' || column_expression || ' has a value on ' || count(docs.doc_id)
                                              || ' documents encoded by model ' || model || '; at least 30 are needed')
                WHEN count(DISTINCT docs.doc_id) < count(docs.doc_id) THEN error('feature_slopes: ' || column_expression || ' has several values per document')
                WHEN count(docs.doc_id) FILTER (WHERE NOT isfinite(x)) > 0
                    THEN error('feature_slopes: ' || column_expression || ' is NaN or infinite on ' || count(docs.doc_id) FILTER (WHERE NOT isfinite(x))
                               || ' documents; make those values NULL to leave the documents out')
                WHEN min(x) = max(x) THEN error('feature_slopes: ' || column_expression || ' has one value on every document')
                ELSE count(docs.doc_id) END AS n, avg(x) AS mean_x
    FROM model_row LEFT JOIN docs ON TRUE
), centred AS (SELECT d.doc_id, d.x - s.mean_x AS dx FROM docs d, stats s),
spread AS (SELECT sum(dx * dx) AS sxx FROM centred),
per_feature AS (
    SELECT c.feature_id, count(*) AS n_docs, sum(x.dx) AS sxy
    FROM sae_codes c JOIN centred x ON x.doc_id = c.doc_id
    WHERE c.model_id = model
    GROUP BY c.feature_id
), fitted AS (
    SELECT f.feature_id, f.n_docs, s.n, f.sxy / p.sxx AS slope,
           sqrt(greatest(0.0, f.n_docs - CAST(f.n_docs AS DOUBLE) * f.n_docs / s.n - f.sxy * f.sxy / p.sxx) / ((s.n - 2) * p.sxx)) AS se
    FROM per_feature f, stats s, spread p
), tested AS (
    SELECT *, CASE WHEN se > 0 THEN slope / se END AS z,
           CASE WHEN se > 0 THEN saedb_erfc(abs(slope / se) / sqrt(2)) ELSE 1.0 END AS p_value
    FROM fitted
), ranked AS (SELECT *, row_number() OVER (ORDER BY p_value, feature_id) AS p_rank, count(*) OVER () AS n_tested FROM tested)
SELECT CAST(model AS INTEGER) AS model_id, CAST(r.feature_id AS INTEGER) AS feature_id, l.label, r.n_docs,
       CAST(r.n_docs AS DOUBLE) / r.n AS share, r.slope, r.se AS slope_se,
       r.slope - 1.959963984540054 * r.se AS slope_low, r.slope + 1.959963984540054 * r.se AS slope_high,
       r.z, r.p_value,
       least(1.0, min(r.p_value * r.n_tested / r.p_rank) OVER (ORDER BY r.p_rank DESC ROWS UNBOUNDED PRECEDING)) AS q_value
FROM ranked r
LEFT JOIN feature_best_labels l ON l.model_id = model AND l.feature_id = r.feature_id
ORDER BY p_value, feature_id;
