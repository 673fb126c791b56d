"""Topics a query can be steered towards or away from, and the database facts behind them.

A topic is what a judge sees (a name) plus what steering moves along (SAE features):
- ``labels``: one clean labelled feature (the paper's protocol);
- ``families``: a feature family, steered along the unit sum of its members' decoder rows;
- ``categories``: an arXiv category, steered along a feature that predicts it. The judge is then
  the category metadata itself, which no embedding, SAE or labeller produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saedb.backends import Backend
from saedb.errors import InvalidInputError

TopicKind = Literal["labels", "families", "categories"]

# Names for the rewriter (the judge compares category codes, never these names).
ARXIV_CATEGORY_NAMES = {
    "cs.LG": "machine learning", "cs.CV": "computer vision", "stat.ML": "statistical machine learning",
    "cs.AI": "artificial intelligence", "cs.CL": "natural language processing", "cs.NE": "neural and evolutionary computing",
    "cs.IR": "information retrieval", "cs.RO": "robotics", "astro-ph.CO": "cosmology",
    "astro-ph.SR": "solar and stellar astrophysics", "astro-ph.HE": "high energy astrophysics",
    "astro-ph.GA": "galaxies", "astro-ph.IM": "astronomical instrumentation and methods",
    "astro-ph.EP": "exoplanets and planetary science",
}


@dataclass(frozen=True)
class Topic:
    name: str  # what judges and rewriters read
    features: tuple[int, ...]  # one feature, or a family's members
    interpretability: float = 1.0  # label Pearson r or category precision
    category: str | None = None  # the arXiv category of a categories topic

    @property
    def key(self) -> str:
        """Topics with one key are one option for the judge (a category reached by several features)."""
        return self.category or self.name


def label_topics(backend: Backend, model_id: int) -> list[Topic]:
    """Clean labelled features (the paper's filter), one per label."""
    rows = backend.query(
        "SELECT feature_id, label, coalesce(pearson, 0) FROM feature_best_labels WHERE model_id = ? AND clean ORDER BY feature_id",
        (model_id,),
    )
    return [Topic(label, (feature,), float(pearson)) for feature, label, pearson in rows]


def family_topics(backend: Backend, model_id: int) -> list[Topic]:
    """Named families with their members; a repeated name keeps its first family."""
    rows = backend.query(
        "SELECT f.family_id, f.label, coalesce(f.pearson, 0), m.feature_id FROM feature_families f "
        "JOIN family_members m ON m.model_id = f.model_id AND m.family_id = f.family_id "
        "WHERE f.model_id = ? ORDER BY f.family_id, m.feature_id",
        (model_id,),
    )
    members: dict[int, list[int]] = {}
    names: dict[int, tuple[str, float]] = {}
    for family_id, label, score, feature in rows:
        members.setdefault(family_id, []).append(feature)
        names[family_id] = (label, float(score))
    topics: dict[str, Topic] = {}
    for family_id, features in members.items():
        label, score = names[family_id]
        topics.setdefault(label, Topic(label, tuple(features), score))
    return list(topics.values())


CATEGORY_SQL = """
WITH doc_categories AS (
    SELECT doc_id, category FROM (SELECT doc_id, unnest(categories) AS category FROM papers) t
    WHERE category NOT IN (SELECT unnest(CAST(? AS VARCHAR[])))
),
category_docs AS (SELECT category, count(*) AS n FROM doc_categories GROUP BY category),
informative AS (SELECT DISTINCT doc_id FROM doc_categories),
feature_docs AS (
    SELECT c.feature_id, count(*) AS n FROM sae_codes c JOIN informative i ON i.doc_id = c.doc_id
    WHERE c.model_id = ? GROUP BY c.feature_id
),
joint AS (
    SELECT c.feature_id, d.category, count(*) AS n
    FROM sae_codes c JOIN doc_categories d ON d.doc_id = c.doc_id
    WHERE c.model_id = ? GROUP BY c.feature_id, d.category
)
SELECT j.feature_id, j.category, j.n * 1.0 / f.n AS precision, k.n AS category_docs, (SELECT count(*) FROM informative) AS informative_docs
FROM joint j JOIN feature_docs f ON f.feature_id = j.feature_id JOIN category_docs k ON k.category = j.category
WHERE f.n >= ? AND j.n * 1.0 / f.n >= ?
ORDER BY j.category, precision DESC, j.feature_id
"""


def archives(backend: Backend) -> list[str]:
    """Categories that are the archive of others in the corpus (pre-2009 'astro-ph' beside
    'astro-ph.CO'): a paper filed only under the archive says nothing about its subcategory."""
    categories = {row[0] for row in backend.query("SELECT DISTINCT unnest(categories) FROM papers")}
    return sorted(c for c in categories if any(o != c and o.startswith(f"{c}.") for o in categories))


def category_topics(backend: Backend, model_id: int, min_precision: float = 0.6, min_lift: float = 2.0,
                    min_feature_docs: int = 20) -> list[Topic]:
    """Features that predict an arXiv category: P(category | feature fires) ≥ ``min_precision``
    and ≥ ``min_lift`` times the category's base rate, both among the papers with a category
    finer than an archive (in the first 20,000 papers of hh_astro, 12,120 are filed only under
    'astro-ph': counted, they kept every feature's precision for a subcategory under 0.6)."""
    rows = backend.query(CATEGORY_SQL, (archives(backend), model_id, model_id, min_feature_docs, min_precision))
    return [
        Topic(ARXIV_CATEGORY_NAMES.get(category, category), (int(feature),), float(precision), category)
        for feature, category, precision, category_docs, informative_docs in rows
        if precision >= min_lift * category_docs / informative_docs
    ]


def topics_of(backend: Backend, model_id: int, kind: TopicKind, category_precision: float = 0.6) -> list[Topic]:
    """The topics of one kind; an error when there are fewer than the judge's 5 options."""
    if kind == "categories":
        topics = category_topics(backend, model_id, min_precision=category_precision)
    else:
        topics = {"labels": label_topics, "families": family_topics}[kind](backend, model_id)
    if len({t.key for t in topics}) < 5:
        hint = {"labels": "run `saedb interp` first (its clean labels are the topics)",
                "families": "run `saedb families` first",
                "categories": f"no feature predicts an arXiv category with precision {category_precision} (and twice its base "
                              "rate); lower --category-precision, or judge with --judge embedder:NAME"}[kind]
        raise InvalidInputError(f"the evaluation needs at least 5 distinct {kind} topics, found "
                                f"{len({t.key for t in topics})}: {hint}")
    return topics
