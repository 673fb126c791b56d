-- BI views over features, identical on DuckDB and PostgreSQL.

-- Activation statistics of each feature of each published model.
CREATE OR REPLACE VIEW feature_stats AS
SELECT c.model_id, c.feature_id,
       count(*) AS n_docs,
       CAST(count(*) AS DOUBLE PRECISION) / max(m.n_documents) AS density,
       avg(c.activation) AS mean_activation,
       max(c.activation) AS max_activation
FROM sae_codes c JOIN sae_models m USING (model_id)
WHERE m.status = 'ready'
GROUP BY c.model_id, c.feature_id;

-- The best label of each feature: clean first, then one that switches its feature on when embedded
-- (its round trip), then the highest predictor correlation; labels of a labeller that failed its
-- control (no better than shuffled labels) are not offered.
CREATE OR REPLACE VIEW feature_best_labels AS
SELECT model_id, feature_id, label, labeller, pearson, f1, coalesce(clean, FALSE) AS clean, roundtrip_rank, decoder_cosine
FROM (SELECT l.*, row_number() OVER (PARTITION BY model_id, feature_id
                                     ORDER BY coalesce(clean, FALSE) DESC, (roundtrip_rank IS NOT NULL) DESC,
                                              pearson DESC NULLS LAST, labeller) AS r
      FROM feature_labels l
      WHERE NOT EXISTS (SELECT 1 FROM label_controls c
                        WHERE c.model_id = l.model_id AND c.labeller = l.labeller AND c.pearson_margin <= 0)) ranked
WHERE r = 1;

-- One row per feature: label, interpretability, density, mean activation, family.
CREATE OR REPLACE VIEW feature_summary AS
SELECT s.model_id, s.feature_id, l.label, l.labeller, l.pearson AS interpretability, l.f1,
       s.n_docs, s.density, s.mean_activation, s.max_activation,
       fm.family_id, f.label AS family_label
FROM feature_stats s
LEFT JOIN feature_best_labels l ON l.model_id = s.model_id AND l.feature_id = s.feature_id
LEFT JOIN (SELECT model_id, feature_id, min(family_id) AS family_id FROM family_members GROUP BY model_id, feature_id) fm
       ON fm.model_id = s.model_id AND fm.feature_id = s.feature_id
LEFT JOIN feature_families f ON f.model_id = fm.model_id AND f.family_id = fm.family_id;

-- How often a feature fires per publication year, and its share of that year's papers.
CREATE OR REPLACE VIEW feature_trends AS
SELECT c.model_id, c.feature_id, p.year, count(*) AS n_docs,
       CAST(count(*) AS DOUBLE PRECISION) / max(y.n_papers) AS share_of_year
FROM sae_codes c
JOIN papers p ON p.doc_id = c.doc_id
JOIN (SELECT year, count(*) AS n_papers FROM papers GROUP BY year) y ON y.year = p.year
GROUP BY c.model_id, c.feature_id, p.year;

-- The 20 documents on which each feature fires hardest.
CREATE OR REPLACE VIEW feature_top_documents AS
SELECT model_id, feature_id, rank, doc_id, arxiv_id, title, year, activation
FROM (SELECT c.model_id, c.feature_id, c.doc_id, p.arxiv_id, p.title, p.year, c.activation,
             row_number() OVER (PARTITION BY c.model_id, c.feature_id ORDER BY c.activation DESC, c.doc_id) AS rank
      FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id) ranked
WHERE rank <= 20;

-- Documents with their metadata and active features, for joins by data engineers.
CREATE OR REPLACE VIEW document_features AS
SELECT c.model_id, p.doc_id, p.arxiv_id, p.title, p.year, p.published, p.categories, p.corpus,
       c.feature_id, c.activation, l.label
FROM sae_codes c
JOIN papers p ON p.doc_id = c.doc_id
LEFT JOIN feature_best_labels l ON l.model_id = c.model_id AND l.feature_id = c.feature_id;

-- The paper's family statistics (paper-notes §4.2), one row per model:
-- mean and median children per family, the largest family, the share of all features in a
-- family, the mean co-occurrence ratio (parent row over children / children block), the
-- block-diagonality of co-occurrence (in-block over off-block mean of C / min(C_ii, C_jj),
-- divided by the same ratio for random feature sets of the same sizes: 1 means no structure)
-- and the membership fraction (clean features in a family whose name scores f1 >= 0.8 and
-- pearson >= 0.8, over all clean features).
CREATE OR REPLACE VIEW family_stats AS
WITH families AS (
    SELECT model_id, count(*) AS n_families,
           avg(CAST(size - 1 AS DOUBLE PRECISION)) AS mean_children,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY size - 1) AS median_children,
           max(size - 1) AS max_children,
           avg(cooccurrence_ratio) AS mean_cooccurrence_ratio,
           avg(f1) AS mean_family_f1,
           avg(pearson) AS mean_family_pearson,
           (sum(in_block_sum) / nullif(sum(in_block_n), 0)) / nullif(sum(off_block_sum) / nullif(sum(off_block_n), 0), 0) AS block_ratio,
           (sum(random_in_block_sum) / nullif(sum(random_in_block_n), 0))
             / nullif(sum(random_off_block_sum) / nullif(sum(random_off_block_n), 0), 0) AS random_block_ratio
    FROM feature_families GROUP BY model_id
), members AS (
    SELECT model_id, count(DISTINCT feature_id) AS features_in_families FROM family_members GROUP BY model_id
), clean AS (
    SELECT model_id, count(*) AS clean_features FROM feature_best_labels WHERE clean GROUP BY model_id
), well_named AS (
    SELECT m.model_id, count(DISTINCT m.feature_id) AS features
    FROM family_members m
    JOIN feature_families f ON f.model_id = m.model_id AND f.family_id = m.family_id
    JOIN feature_best_labels l ON l.model_id = m.model_id AND l.feature_id = m.feature_id
    WHERE l.clean AND f.f1 >= 0.8 AND f.pearson >= 0.8
    GROUP BY m.model_id
)
SELECT f.model_id, f.n_families, f.mean_children, f.median_children, f.max_children,
       CAST(mem.features_in_families AS DOUBLE PRECISION) / sm.n_latents AS share_of_features,
       CAST(f.max_children + 1 AS DOUBLE PRECISION) / sm.n_latents AS largest_family_share,
       c.clean_features,
       f.mean_cooccurrence_ratio,
       f.block_ratio / nullif(f.random_block_ratio, 0) AS block_diagonality,
       f.mean_family_f1, f.mean_family_pearson,
       CAST(coalesce(w.features, 0) AS DOUBLE PRECISION) / nullif(c.clean_features, 0) AS membership_fraction
FROM families f
JOIN sae_models sm ON sm.model_id = f.model_id
LEFT JOIN members mem ON mem.model_id = f.model_id
LEFT JOIN clean c ON c.model_id = f.model_id
LEFT JOIN well_named w ON w.model_id = f.model_id;

-- The latest evaluation run of each model and judge, one row per method and strengths: the
-- accuracy-vs-cosine chart (saedb eval). Rewriting rows have NULL strengths.
CREATE OR REPLACE VIEW eval_latest AS
SELECT r.model_id, r.run_id, r.judge, r.rewriter, r.queries, r.n_queries, r.created_at,
       x.method, x.a_up, x.a_down, x.n_cases, x.cosine, x.up_accuracy, x.down_accuracy, x.unanswered
FROM eval_runs r
JOIN eval_results x ON x.run_id = r.run_id
WHERE r.run_id = (SELECT max(l.run_id) FROM eval_runs l WHERE l.model_id = r.model_id AND l.judge = r.judge);

-- Feature lineage (saedb match): each feature with its best match in another model, both labels,
-- whether the match is mutual (each the other's best), how many features of the other model have
-- it as their best match at cosine >= 0.5 (2 or more: it split into them; 0: nothing there
-- descends from it) and whether it is an orphan (no feature of the other model within cosine 0.5). carried_label: the
-- other model's label for a feature that has none, where the match is mutual at cosine >= 0.8.
CREATE OR REPLACE VIEW feature_lineage AS
SELECT m.model_id, m.feature_id, l.label, m.other_model_id, m.other_feature_id, o.label AS other_label, m.cosine,
       coalesce(back.other_feature_id = m.feature_id, FALSE) AS mutual,
       coalesce(children.n, 0) AS matched_by,
       m.cosine < 0.5 AS orphan,
       CASE WHEN l.label IS NULL AND back.other_feature_id = m.feature_id AND m.cosine >= 0.8 THEN o.label END AS carried_label
FROM feature_matches m
LEFT JOIN feature_matches back
       ON back.model_id = m.other_model_id AND back.other_model_id = m.model_id AND back.feature_id = m.other_feature_id
LEFT JOIN (SELECT model_id, other_model_id, other_feature_id, count(*) AS n FROM feature_matches WHERE cosine >= 0.5
           GROUP BY model_id, other_model_id, other_feature_id) children
       ON children.model_id = m.other_model_id AND children.other_model_id = m.model_id AND children.other_feature_id = m.feature_id
LEFT JOIN feature_best_labels l ON l.model_id = m.model_id AND l.feature_id = m.feature_id
LEFT JOIN feature_best_labels o ON o.model_id = m.other_model_id AND o.feature_id = m.other_feature_id;

-- One row per matched pair of models and direction: the paper's max-cosine summary (mean and
-- median over the model's features of the best cosine in the other), mutual matches, features
-- split into several of the other model's, orphans and labels carried.
CREATE OR REPLACE VIEW model_matches AS
SELECT model_id, other_model_id, count(*) AS n_features,
       avg(cosine) AS mean_max_cosine,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY cosine) AS median_max_cosine,
       sum(CASE WHEN mutual THEN 1 ELSE 0 END) AS mutual,
       sum(CASE WHEN matched_by >= 2 THEN 1 ELSE 0 END) AS split_features,
       max(matched_by) AS largest_split,
       sum(CASE WHEN orphan THEN 1 ELSE 0 END) AS orphans,
       count(carried_label) AS carried_labels
FROM feature_lineage
GROUP BY model_id, other_model_id;

-- The paper's scaling laws over a grid's runs (saedb grid): L = coefficient * n^alpha per k, and
-- L = coefficient * k^beta per n, least squares in log-log space, with r^2.
CREATE OR REPLACE VIEW scaling_fits AS
SELECT grid, 'n' AS along, k, CAST(NULL AS INTEGER) AS n_latents, count(*) AS runs,
       regr_slope(ln(normalised_mse), ln(n_latents)) AS exponent,
       exp(regr_intercept(ln(normalised_mse), ln(n_latents))) AS coefficient,
       regr_r2(ln(normalised_mse), ln(n_latents)) AS r2
FROM scaling_runs GROUP BY grid, k HAVING count(*) >= 2
UNION ALL
SELECT grid, 'k' AS along, CAST(NULL AS INTEGER) AS k, n_latents, count(*) AS runs,
       regr_slope(ln(normalised_mse), ln(k)) AS exponent,
       exp(regr_intercept(ln(normalised_mse), ln(k))) AS coefficient,
       regr_r2(ln(normalised_mse), ln(k)) AS r2
FROM scaling_runs GROUP BY grid, n_latents HAVING count(*) >= 2;
