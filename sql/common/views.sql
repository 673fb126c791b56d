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

-- The best-scoring label of each feature (highest predictor correlation).
CREATE OR REPLACE VIEW feature_best_labels AS
SELECT model_id, feature_id, label, labeller, pearson, f1
FROM (SELECT l.*, row_number() OVER (PARTITION BY model_id, feature_id ORDER BY pearson DESC NULLS LAST, labeller) AS r
      FROM feature_labels l) ranked
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
