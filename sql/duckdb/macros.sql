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
CREATE OR REPLACE MACRO sae_decode(codes, model) AS CAST(coalesce((
    WITH parts AS (
        SELECT c.activation, d.w_dec
        FROM (SELECT unnest(codes) AS c) u
        JOIN sae_decoder d ON d.model_id = model AND d.feature_id = u.c.feature_id
    ), direction AS (
        SELECT i, sum(p.activation * p.w_dec[i]) AS v FROM parts p, range(1, {dim} + 1) r(i) GROUP BY i
    )
    SELECT list(m.b_pre[r.i] + coalesce(d.v, 0) ORDER BY r.i)
    FROM sae_models m CROSS JOIN range(1, {dim} + 1) r(i) LEFT JOIN direction d ON d.i = r.i
    WHERE m.model_id = model AND m.status = 'ready' AND (SELECT count(*) FROM parts) = len(codes)
), error(CASE WHEN model IS NULL THEN 'sae_decode: model is NULL' ELSE 'sae_decode: unknown model ' || model || ' or a feature it does not have' END)) AS FLOAT[{dim}]);

-- x + sum of strength_i * W_dec[feature_i].
CREATE OR REPLACE MACRO steer_many(embedding, features, strengths, model) AS CAST(coalesce((
    WITH q AS (SELECT CAST(embedding AS FLOAT[]) AS x),
    wanted AS (SELECT unnest(features) AS feature_id, unnest(strengths) AS strength),
    parts AS (
        SELECT w.strength, d.w_dec FROM wanted w
        JOIN sae_decoder d ON d.model_id = model AND d.feature_id = w.feature_id
        JOIN sae_models m ON m.model_id = model AND m.status = 'ready'
    ), direction AS (
        SELECT i, sum(p.strength * p.w_dec[i]) AS v FROM parts p, range(1, {dim} + 1) r(i) GROUP BY i
    )
    SELECT list(q.x[d.i] + d.v ORDER BY d.i)
    FROM direction d, q
    WHERE len(features) = len(strengths) AND (SELECT count(*) FROM parts) = len(features)
), error(CASE WHEN model IS NULL THEN 'steer_many: model is NULL' ELSE 'steer_many: unknown model ' || model || ', a feature it does not have, or features and strengths of different lengths' END)) AS FLOAT[{dim}]);

-- x + strength * W_dec[feature].
CREATE OR REPLACE MACRO steer(embedding, feature, strength, model) AS CAST(coalesce((
    WITH q AS (SELECT CAST(embedding AS FLOAT[]) AS x)
    SELECT list_transform(range(1, {dim} + 1), lambda i: q.x[i] + strength * d.w_dec[i])
    FROM q, sae_decoder d JOIN sae_models m ON m.model_id = d.model_id AND m.status = 'ready'
    WHERE d.model_id = model AND d.feature_id = feature
), error(CASE WHEN model IS NULL THEN 'steer: model is NULL' ELSE 'steer: model ' || model || ' has no feature ' || coalesce(CAST(feature AS VARCHAR), 'NULL') || ' (or is not published)' END)) AS FLOAT[{dim}]);

-- x + strength * unit(sum of the family's decoder rows).
CREATE OR REPLACE MACRO steer_family(embedding, family, strength, model) AS CAST(coalesce((
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
    SELECT list(q.x[i] + strength * v / sqrt((SELECT sum(v * v) FROM direction)) ORDER BY i)
    FROM direction, q
), error(CASE WHEN model IS NULL THEN 'steer_family: model is NULL' ELSE 'steer_family: model ' || model || ' has no family ' || coalesce(CAST(family AS VARCHAR), 'NULL') END)) AS FLOAT[{dim}]);

-- The unit vector a fraction of the angle from the query toward a feature's decoder direction
-- (negative: toward its opposite); saedb.sae.toward is the reference. Written relationally, like
-- the macros above: DuckDB 1.5 clients bind neither lambdas over correlated columns nor CASE on
-- arrays. steer_toward_many (several features in turn) exists only inside saedb.
CREATE OR REPLACE MACRO steer_toward(embedding, feature, fraction, model) AS CAST(coalesce((
    WITH q AS (SELECT CAST(embedding AS DOUBLE[]) AS x),
    d AS (
        SELECT CAST(w.w_dec AS DOUBLE[]) AS w FROM sae_decoder w JOIN sae_models m ON m.model_id = w.model_id AND m.status = 'ready'
        WHERE w.model_id = model AND w.feature_id = feature
    ),
    g AS (
        SELECT q.x, d.w, abs(fraction) AS t, sign(fraction) AS s, sqrt(list_dot_product(q.x, q.x)) AS nx,
               sqrt(list_dot_product(d.w, d.w)) AS nd,
               acos(greatest(-1.0, least(1.0, sign(fraction) * list_dot_product(q.x, d.w)
                                        / (sqrt(list_dot_product(q.x, q.x)) * sqrt(list_dot_product(d.w, d.w)))))) AS angle
        FROM q, d WHERE abs(fraction) <= 1 AND len(q.x) = {dim}
    )
    SELECT list(CASE WHEN sin(g.angle) < 1e-7 THEN g.x[i] / g.nx
                     ELSE (sin((1 - g.t) * g.angle) * g.x[i] / g.nx + sin(g.t * g.angle) * g.s * g.w[i] / g.nd) / sin(g.angle) END
                ORDER BY i)
    FROM g, range(1, {dim} + 1) r(i)
), error(CASE WHEN model IS NULL THEN 'steer_toward: model is NULL'
              WHEN NOT abs(fraction) <= 1 THEN 'steer_toward: steering fraction must be between -1 and 1'
              ELSE 'steer_toward: model ' || model || ' has no feature ' || coalesce(CAST(feature AS VARCHAR), 'NULL')
                   || ' (or is not published)' END)) AS FLOAT[{dim}]);

-- The same toward a family's direction (its members' summed decoder rows).
CREATE OR REPLACE MACRO steer_toward_family(embedding, family, fraction, model) AS CAST(coalesce((
    WITH q AS (SELECT CAST(embedding AS DOUBLE[]) AS x),
    summed AS (
        SELECT i, sum(w.w_dec[i]) AS v
        FROM family_members f
        JOIN sae_decoder w ON w.model_id = f.model_id AND w.feature_id = f.feature_id
        JOIN sae_models m ON m.model_id = f.model_id AND m.status = 'ready',
        range(1, {dim} + 1) r(i)
        WHERE f.model_id = model AND f.family_id = family
        GROUP BY i
    ),
    d AS (SELECT list(CAST(v AS DOUBLE) ORDER BY i) AS w FROM summed HAVING count(*) = {dim}),
    g AS (
        SELECT q.x, d.w, abs(fraction) AS t, sign(fraction) AS s, sqrt(list_dot_product(q.x, q.x)) AS nx,
               sqrt(list_dot_product(d.w, d.w)) AS nd,
               acos(greatest(-1.0, least(1.0, sign(fraction) * list_dot_product(q.x, d.w)
                                        / (sqrt(list_dot_product(q.x, q.x)) * sqrt(list_dot_product(d.w, d.w)))))) AS angle
        FROM q, d WHERE abs(fraction) <= 1 AND len(q.x) = {dim}
    )
    SELECT list(CASE WHEN sin(g.angle) < 1e-7 THEN g.x[i] / g.nx
                     ELSE (sin((1 - g.t) * g.angle) * g.x[i] / g.nx + sin(g.t * g.angle) * g.s * g.w[i] / g.nd) / sin(g.angle) END
                ORDER BY i)
    FROM g, range(1, {dim} + 1) r(i)
), error(CASE WHEN model IS NULL THEN 'steer_toward_family: model is NULL'
              WHEN NOT abs(fraction) <= 1 THEN 'steer_toward_family: steering fraction must be between -1 and 1'
              ELSE 'steer_toward_family: model ' || model || ' has no family ' || coalesce(CAST(family AS VARCHAR), 'NULL') END))
    AS FLOAT[{dim}]);
