-- Pure-SQL twins of saedb's SQL functions, persisted in the file, so that any DuckDB client (the
-- duckdb CLI, duckdb-engine/SQLAlchemy for BI tools, dbt-duckdb) can call them without saedb.
-- A saedb process shadows them with temporary macros over its vectorised Python UDFs: same names,
-- same results (tests/test_sql_macros.py), the UDFs are the fast path (bench/bench_macros.py).
-- {dim} is the database's embedding dimension. Unknown models, features or families are errors.

-- ReLU(TopK(W_enc (x - b_pre) + b_lat)) as STRUCT(feature_id, activation)[], strongest first.
CREATE OR REPLACE MACRO sae_encode(embedding, model) AS coalesce((
    WITH q AS (SELECT CAST(embedding AS FLOAT[]) AS x),
    centred AS (
        SELECT list_transform(range(1, {dim} + 1), lambda i: q.x[i] - m.b_pre[i]) AS x, m.k
        FROM sae_models m, q WHERE m.model_id = model AND m.status = 'ready' AND len(q.x) = {dim}
    ), pre AS (
        SELECT e.feature_id, list_dot_product(e.w_enc, c.x) + e.b_lat AS a, c.k
        FROM sae_encoder e, centred c WHERE e.model_id = model
    )
    SELECT list_filter(list(struct_pack(feature_id := CAST(feature_id AS INTEGER), activation := CAST(a AS FLOAT))
                            ORDER BY a DESC, feature_id)[1:max(k)], lambda s: s.activation > 0)
    FROM pre
), error(CASE WHEN model IS NULL THEN 'sae_encode: model is NULL' ELSE 'sae_encode: unknown model ' || model || ' (no published model with that id), or an embedding that is not {dim}-d' END));

-- b_pre + sum of activation * W_dec[feature] over the codes.
CREATE OR REPLACE MACRO sae_decode(codes, model) AS coalesce((
    WITH parts AS (
        SELECT c.activation, d.w_dec
        FROM (SELECT unnest(codes) AS c) u
        JOIN sae_decoder d ON d.model_id = model AND d.feature_id = u.c.feature_id
    ), direction AS (
        SELECT i, sum(p.activation * p.w_dec[i]) AS v FROM parts p, range(1, {dim} + 1) r(i) GROUP BY i
    )
    SELECT CAST(list(m.b_pre[r.i] + coalesce(d.v, 0) ORDER BY r.i) AS FLOAT[{dim}])
    FROM sae_models m CROSS JOIN range(1, {dim} + 1) r(i) LEFT JOIN direction d ON d.i = r.i
    WHERE m.model_id = model AND m.status = 'ready' AND (SELECT count(*) FROM parts) = len(codes)
), error(CASE WHEN model IS NULL THEN 'sae_decode: model is NULL' ELSE 'sae_decode: unknown model ' || model || ' or a feature it does not have' END));

-- x + sum of strength_i * W_dec[feature_i].
CREATE OR REPLACE MACRO steer_many(embedding, features, strengths, model) AS coalesce((
    WITH q AS (SELECT CAST(embedding AS FLOAT[]) AS x),
    wanted AS (SELECT unnest(features) AS feature_id, unnest(strengths) AS strength),
    parts AS (
        SELECT w.strength, d.w_dec FROM wanted w
        JOIN sae_decoder d ON d.model_id = model AND d.feature_id = w.feature_id
        JOIN sae_models m ON m.model_id = model AND m.status = 'ready'
    ), direction AS (
        SELECT i, sum(p.strength * p.w_dec[i]) AS v FROM parts p, range(1, {dim} + 1) r(i) GROUP BY i
    )
    SELECT CAST(list(q.x[d.i] + d.v ORDER BY d.i) AS FLOAT[{dim}])
    FROM direction d, q
    WHERE len(features) = len(strengths) AND (SELECT count(*) FROM parts) = len(features)
), error(CASE WHEN model IS NULL THEN 'steer_many: model is NULL' ELSE 'steer_many: unknown model ' || model || ', a feature it does not have, or features and strengths of different lengths' END));

-- x + strength * W_dec[feature].
CREATE OR REPLACE MACRO steer(embedding, feature, strength, model) AS coalesce((
    WITH q AS (SELECT CAST(embedding AS FLOAT[]) AS x)
    SELECT CAST(list_transform(range(1, {dim} + 1), lambda i: q.x[i] + strength * d.w_dec[i]) AS FLOAT[{dim}])
    FROM q, sae_decoder d JOIN sae_models m ON m.model_id = d.model_id AND m.status = 'ready'
    WHERE d.model_id = model AND d.feature_id = feature
), error(CASE WHEN model IS NULL THEN 'steer: model is NULL' ELSE 'steer: model ' || model || ' has no feature ' || coalesce(CAST(feature AS VARCHAR), 'NULL') || ' (or is not published)' END));

-- x + strength * unit(sum of the family's decoder rows).
CREATE OR REPLACE MACRO steer_family(embedding, family, strength, model) AS coalesce((
    WITH q AS (SELECT CAST(embedding AS FLOAT[]) AS x),
    direction AS (
        SELECT i, sum(d.w_dec[i]) AS v
        FROM family_members f
        JOIN sae_decoder d ON d.model_id = f.model_id AND d.feature_id = f.feature_id
        JOIN sae_models m ON m.model_id = f.model_id AND m.status = 'ready',
        range(1, {dim} + 1) r(i)
        WHERE f.model_id = model AND f.family_id = family
        GROUP BY i
    )
    SELECT CAST(list(q.x[i] + strength * v / sqrt((SELECT sum(v * v) FROM direction)) ORDER BY i) AS FLOAT[{dim}])
    FROM direction, q
), error(CASE WHEN model IS NULL THEN 'steer_family: model is NULL' ELSE 'steer_family: model ' || model || ' has no family ' || coalesce(CAST(family AS VARCHAR), 'NULL') END));

-- The unit vector a fraction of the angle from x toward the direction w (negative: toward -w),
-- as DOUBLE lists; saedb.sae.toward is the reference. NULL for a fraction outside [-1, 1].
CREATE OR REPLACE MACRO sae_toward(x, w, fraction) AS (
    WITH g AS (
        SELECT abs(fraction) AS t, sign(fraction) AS s, sqrt(list_dot_product(x, x)) AS nx, sqrt(list_dot_product(w, w)) AS nd,
               acos(greatest(-1.0, least(1.0, sign(fraction) * list_dot_product(x, w)
                                            / (sqrt(list_dot_product(x, x)) * sqrt(list_dot_product(w, w)))))) AS angle
        WHERE abs(fraction) <= 1
    )
    SELECT CAST(list_transform(range(1, {dim} + 1), lambda i: CASE WHEN sin(g.angle) < 1e-7 THEN x[i] / g.nx
               ELSE (sin((1 - g.t) * g.angle) * x[i] / g.nx + sin(g.t * g.angle) * g.s * w[i] / g.nd) / sin(g.angle) END)
           AS FLOAT[{dim}])
    FROM g
);

-- The fraction of the angle toward a feature's decoder direction. steer_toward_many (several
-- features in turn) exists only inside saedb.
CREATE OR REPLACE MACRO steer_toward(embedding, feature, fraction, model) AS coalesce((
    SELECT sae_toward(CAST(embedding AS DOUBLE[]), CAST(d.w_dec AS DOUBLE[]), CAST(fraction AS DOUBLE))
    FROM sae_decoder d JOIN sae_models m ON m.model_id = d.model_id AND m.status = 'ready'
    WHERE d.model_id = model AND d.feature_id = feature AND len(embedding) = {dim}
), error(CASE WHEN model IS NULL THEN 'steer_toward: model is NULL'
              WHEN NOT abs(fraction) <= 1 THEN 'steer_toward: steering fraction must be between -1 and 1'
              ELSE 'steer_toward: model ' || model || ' has no feature ' || coalesce(CAST(feature AS VARCHAR), 'NULL')
                   || ' (or is not published)' END));

-- The fraction of the angle toward a family's direction (its members' summed decoder rows).
CREATE OR REPLACE MACRO steer_toward_family(embedding, family, fraction, model) AS coalesce((
    WITH summed AS (
        SELECT i, sum(d.w_dec[i]) AS v
        FROM family_members f
        JOIN sae_decoder d ON d.model_id = f.model_id AND d.feature_id = f.feature_id
        JOIN sae_models m ON m.model_id = f.model_id AND m.status = 'ready',
        range(1, {dim} + 1) r(i)
        WHERE f.model_id = model AND f.family_id = family
        GROUP BY i
    )
    SELECT sae_toward(CAST(embedding AS DOUBLE[]), list(CAST(v AS DOUBLE) ORDER BY i), CAST(fraction AS DOUBLE))
    FROM summed HAVING count(*) = {dim} AND len(embedding) = {dim}
), error(CASE WHEN model IS NULL THEN 'steer_toward_family: model is NULL'
              WHEN NOT abs(fraction) <= 1 THEN 'steer_toward_family: steering fraction must be between -1 and 1'
              ELSE 'steer_toward_family: model ' || model || ' has no family ' || coalesce(CAST(family AS VARCHAR), 'NULL') END));
