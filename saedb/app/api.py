"""The web app's JSON API: one function per endpoint, each a few parameterised queries.

Functions take a read-only backend and validated arguments and return plain dicts; bad
input raises ApiError with an HTTP status and a message meant for the user.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from saedb.analytics import enrichment
from saedb.backends import Backend
from saedb.concepts import concept_feature
from saedb.errors import InvalidInputError, UnknownModelError
from saedb.search import Steering, check_corpus, run_portable
from saedb.search import search as search_documents


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def records(backend: Backend, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts keyed by the result's column names."""
    return [{k: _plain(v) for k, v in row.items()} for row in backend.arrow(sql, params).to_pylist()]


def _plain(value: Any) -> Any:
    """JSON-friendly scalars: NaN becomes null, numpy and decimal types become floats."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if hasattr(value, "as_integer_ratio") and not isinstance(value, (int, float)):
        return float(value)
    return value


def check_model(backend: Backend, model_id: int) -> dict[str, Any]:
    try:
        return backend.model_row(model_id)
    except UnknownModelError as exc:
        raise ApiError(404, str(exc)) from None


def models(backend: Backend) -> list[dict[str, Any]]:
    return records(
        backend,
        "SELECT model_id, name, version, n_latents, k, n_documents FROM sae_models WHERE status = 'ready' "
        "AND control_of IS NULL ORDER BY model_id DESC",  # an untrained control is never offered for steering
    )


def categories(backend: Backend) -> list[dict[str, Any]]:
    """The documents' categories with their sizes, for the compare page's filters."""
    return records(backend, "SELECT category, count(*) AS papers FROM (SELECT unnest(categories) AS category FROM papers) c "
                            "GROUP BY category ORDER BY count(*) DESC, category")


@dataclass(frozen=True)
class DocumentFilter:
    """One side of the compare page: a category and a year range, each optional."""

    category: str | None = None
    year_from: int | None = None
    year_to: int | None = None

    def predicate(self) -> str | None:
        """The SQL predicate (values as escaped literals: the analytics take SQL text), None if empty."""
        parts = []
        if self.category:
            parts.append("'" + self.category.replace("'", "''") + "' = ANY(categories)")
        if self.year_from is not None:
            parts.append(f"year >= {int(self.year_from)}")
        if self.year_to is not None:
            parts.append(f"year <= {int(self.year_to)}")
        return " AND ".join(parts) or None

    def describe(self) -> str:
        years = (f"{self.year_from or '…'}–{self.year_to or '…'}" if self.year_from is not None or self.year_to is not None else "")
        return " · ".join(part for part in (self.category or "", years) if part) or "all documents"


OVERLAP_RULES = ("leave-out", "a", "b")  # where a document in both sets counts


def compare(backend: Backend, model_id: int, a: DocumentFilter, b: DocumentFilter, top: int = 15,
            overlap: str = "leave-out") -> dict[str, Any]:
    """The compare page: the ``top`` features most significantly over- and under-represented in
    A against B (B empty: every other document), from feature_enrichment, each list sorted by
    the log odds it charts. Documents in both sets (a paper cross-listed in both categories) are
    left out of both, or counted in A or in B only (``overlap``); how many there are is said."""
    check_model(backend, model_id)
    if overlap not in OVERLAP_RULES:
        raise ApiError(400, f"overlap must be one of {', '.join(OVERLAP_RULES)}, not {overlap!r}")
    a_predicate, b_predicate = a.predicate(), b.predicate()
    if a_predicate is None:
        raise ApiError(400, "set A needs a category or a year")
    if b_predicate is not None and b_predicate == a_predicate:
        raise ApiError(400, "sets A and B are the same filter")
    in_both = 0
    if b_predicate is not None:
        in_both = int(backend.query(f"SELECT count(*) FROM papers WHERE ({a_predicate}) AND ({b_predicate})")[0][0])
        a_only, b_only = f"({a_predicate}) AND NOT ({b_predicate})", f"({b_predicate}) AND NOT ({a_predicate})"
        a_predicate, b_predicate = {"leave-out": (a_only, b_only), "a": (a_predicate, b_only), "b": (a_only, b_predicate)}[overlap]
    try:
        rows = [{k: _plain(v) for k, v in row.items()} for row in enrichment(backend, model_id, a_predicate, b_predicate).to_pylist()]
    except InvalidInputError as exc:
        raise ApiError(400, str(exc).replace("Invalid Input Error: ", "")) from None
    if not rows:
        raise ApiError(400, "one of the sets has no documents" + (" once the documents in both are left out" if in_both else ""))
    return {
        "a": a.describe(), "b": b.describe() if b.predicate() else "the other documents",
        "a_total": rows[0]["a_total"], "b_total": rows[0]["b_total"], "tested": len(rows),
        "in_both": in_both, "overlap": overlap,
        "significant": sum(1 for r in rows if r["q_value"] < 0.05),
        "over": sorted([r for r in rows if r["log_odds"] > 0][:top], key=lambda r: -r["log_odds"]),
        "under": sorted([r for r in rows if r["log_odds"] < 0][:top], key=lambda r: r["log_odds"]),
    }


def corpora(backend: Backend) -> list[dict[str, Any]]:
    """The corpora in the database (saedb load names each after its file), with their sizes."""
    return records(backend, "SELECT corpus, count(*) AS papers FROM papers GROUP BY corpus ORDER BY corpus")


def labels_of(backend: Backend, model_id: int, features: list[int]) -> dict[int, str]:
    if not features:
        return {}
    marks = ", ".join("?" * len(features))
    return dict(backend.query(f"SELECT feature_id, label FROM feature_best_labels WHERE model_id = ? AND feature_id IN ({marks})",
                              (model_id, *features)))


def search(
    backend: Backend,
    embed: Callable[[str], np.ndarray],
    text: str,
    model_id: int,
    features: list[tuple[int, float]],
    families: list[tuple[int, float]],
    limit: int,
    corpus: str | None = None,
    year_from: int | None = None,
    year_to: int | None = None,
) -> dict[str, Any]:
    """Results for the query (within one corpus and range of years if given), steered by
    features and families, with the query's own features."""
    info = check_model(backend, model_id)
    for feature, _ in features:
        if not 0 <= feature < info["n_latents"]:
            raise ApiError(400, f"feature {feature} does not exist (model {model_id} has features 0..{info['n_latents'] - 1})")
    query = embed(text)
    steering = [Steering("family", f, s, model_id) for f, s in families] + [Steering("feature", f, s, model_id) for f, s in features]
    results = search_documents(backend, query, limit, steering, corpus, year_from, year_to)
    active = run_portable(backend, "SELECT f.feature_id, f.activation FROM unnest(sae_encode($1::vector, $2)) AS f", [query, model_id])
    labels = labels_of(backend, model_id, [f for f, _ in active] + [f for f, _ in features])
    return {
        "results": explained(backend, model_id, results, [f for f, s in features if s], labels),
        "query_features": [{"feature_id": f, "activation": _plain(a), "label": labels.get(f)} for f, a in active],
        "steering": [{"feature_id": f, "strength": s, "label": labels.get(f)} for f, s in features]
                    + [{"family_id": f, "strength": s} for f, s in families],
    }


def explained(backend: Backend, model_id: int, hits: list, steered: list[int], labels: dict[int, str]) -> list[dict[str, Any]]:
    """Each hit with its abstract and categories, and which of the steered features it carries
    (their activations on it), as the paper's app shows them."""
    if not hits:
        return []
    marks = ", ".join("?" * len(hits))
    ids = [hit.doc_id for hit in hits]
    papers = {row[0]: row[1:] for row in backend.query(f"SELECT doc_id, abstract, categories FROM papers WHERE doc_id IN ({marks})", ids)}
    carried: dict[int, list[dict[str, Any]]] = {}
    if steered:
        rows = backend.query(f"SELECT doc_id, feature_id, activation FROM sae_codes WHERE model_id = ? AND doc_id IN ({marks}) "
                             f"AND feature_id IN ({', '.join('?' * len(steered))}) ORDER BY doc_id, activation DESC",
                             (model_id, *ids, *steered))
        for doc_id, feature_id, activation in rows:
            carried.setdefault(doc_id, []).append({"feature_id": feature_id, "activation": _plain(activation), "label": labels.get(feature_id)})
    shown = []
    for hit in hits:
        abstract, categories = papers.get(hit.doc_id, ("", []))
        shown.append({**asdict(hit), "abstract": abstract, "categories": list(categories or []), "carries": carried.get(hit.doc_id, [])})
    return shown


FUZZY_MATCH = 0.75  # difflib ratio for a label that does not contain the text


def find_features(backend: Backend, embed: Callable[[str], np.ndarray], text: str, model_id: int, limit: int) -> dict[str, Any]:
    """Features for a text: the one feature of ``saedb.concepts``' rule (what steer_label and the
    demo pick), then lists by label (contains the text, else a close spelling) and by concept
    (cosine between the text's embedding and each feature's decoder direction)."""
    check_model(backend, model_id)
    decoder = backend.decoder(model_id)
    try:
        concept = concept_feature(backend, model_id, text, embed, decoder)
    except InvalidInputError as exc:
        raise ApiError(400, str(exc)) from None
    needle = text.lower()
    rows = backend.query("SELECT feature_id, label, pearson FROM feature_best_labels WHERE model_id = ?", (model_id,))
    by_label = []
    for feature_id, label, pearson in rows:
        low = label.lower()
        match = 2.0 + (low == needle) if needle in low else difflib.SequenceMatcher(None, needle, low).ratio()
        if match >= FUZZY_MATCH:
            by_label.append((match, pearson or 0.0, feature_id))
    by_label.sort(key=lambda m: (-m[0], -m[1], m[2]))
    query = embed(text)
    cosine = decoder @ query / (np.linalg.norm(decoder, axis=1) * np.linalg.norm(query))
    nearest = np.argsort(-cosine, kind="stable")[:limit].tolist()
    shown = by_label[:limit]
    cards = feature_cards(backend, model_id, [concept.feature_id, *(m[2] for m in shown), *nearest])
    return {
        "concept": {**cards[concept.feature_id], "by": concept.by},
        "by_label": [cards[m[2]] for m in shown],
        "by_concept": [{**cards[f], "cosine": _plain(cosine[f])} for f in nearest],
    }


TOP_TITLES = 3  # titles that tell features with one label apart (shown on hover)


def feature_cards(backend: Backend, model_id: int, features: list[int]) -> dict[int, dict[str, Any]]:
    """The same figures for every feature a list offers: label, interpretability (Pearson r),
    F1, density, and the titles of its TOP_TITLES most activating papers."""
    ids = sorted(set(features))
    marks = ", ".join("?" * len(ids))
    quality = {f: (label, pearson, f1) for f, label, pearson, f1 in backend.query(
        f"SELECT feature_id, label, pearson, f1 FROM feature_best_labels WHERE model_id = ? AND feature_id IN ({marks})", (model_id, *ids))}
    density = dict(backend.query(f"SELECT feature_id, density FROM feature_stats WHERE model_id = ? AND feature_id IN ({marks})",
                                 (model_id, *ids)))
    titles: dict[int, list[str]] = {}
    for feature_id, title in backend.query(
            f"SELECT feature_id, title FROM (SELECT c.feature_id, p.title, row_number() OVER (PARTITION BY c.feature_id "
            f"ORDER BY c.activation DESC, c.doc_id) AS rank FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id "
            f"WHERE c.model_id = ? AND c.feature_id IN ({marks})) ranked WHERE rank <= {TOP_TITLES} ORDER BY feature_id, rank",
            (model_id, *ids)):
        titles.setdefault(feature_id, []).append(title)
    return {f: {"feature_id": f, "label": quality.get(f, (None,))[0], "interpretability": _plain(quality.get(f, (None, None))[1]),
                "f1": _plain(quality.get(f, (None, None, None))[2]), "density": _plain(density.get(f)), "top_titles": titles.get(f, [])}
            for f in ids}


def feature(backend: Backend, model_id: int, feature_id: int, corpus: str | None = None) -> dict[str, Any]:
    """Everything the feature page shows; with ``corpus``, its top abstracts and share of
    documents within that corpus."""
    check_model(backend, model_id)
    check_corpus(backend, corpus)
    summary = records(
        backend,
        "SELECT feature_id, label, labeller, interpretability, f1, n_docs, density, mean_activation, max_activation "
        "FROM feature_summary WHERE model_id = ? AND feature_id = ?",
        (model_id, feature_id),
    )
    if not summary:
        raise ApiError(404, f"feature {feature_id} of model {model_id} never fires or does not exist")
    page = summary[0]
    width = (page["max_activation"] or 1.0) / 20
    page["histogram"] = records(
        backend,
        "SELECT floor(activation / ?) * ? AS bin_start, count(*) AS count FROM sae_codes WHERE model_id = ? AND feature_id = ? GROUP BY 1 ORDER BY 1",
        (width, width, model_id, feature_id),
    )
    page["top_documents"] = records(
        backend,
        "SELECT t.rank, t.arxiv_id, t.title, t.year, t.activation, substr(p.abstract, 1, 400) AS abstract FROM feature_top_documents t "
        "JOIN papers p ON p.doc_id = t.doc_id WHERE t.model_id = ? AND t.feature_id = ? ORDER BY t.rank LIMIT 10",
        (model_id, feature_id),
    )
    page["cooccurring"] = records(
        backend,
        "SELECT o.other AS feature_id, o.n_docs, l.label FROM (SELECT CASE WHEN feature_i = ? THEN feature_j ELSE feature_i END AS other, n_docs "
        "FROM feature_cooccurrence WHERE model_id = ? AND (feature_i = ? OR feature_j = ?) AND feature_i <> feature_j) o "
        "LEFT JOIN feature_best_labels l ON l.model_id = ? AND l.feature_id = o.other ORDER BY o.n_docs DESC, o.other LIMIT 10",
        (feature_id, model_id, feature_id, feature_id, model_id),
    )
    page["families"] = [
        family(backend, model_id, family_id)
        for (family_id,) in backend.query(
            "SELECT family_id FROM family_members WHERE model_id = ? AND feature_id = ? ORDER BY family_id LIMIT 3", (model_id, feature_id))
    ]
    if corpus is not None:
        page["top_documents"] = records(
            backend,
            "SELECT row_number() OVER (ORDER BY c.activation DESC, c.doc_id) AS rank, p.arxiv_id, p.title, p.year, c.activation, "
            "substr(p.abstract, 1, 400) AS abstract FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id "
            "WHERE c.model_id = ? AND c.feature_id = ? AND p.corpus = ? ORDER BY c.activation DESC, c.doc_id LIMIT 10",
            (model_id, feature_id, corpus),
        )
        page["corpus"] = records(
            backend,
            "SELECT ? AS corpus, count(c.doc_id) AS n_docs, CAST(count(c.doc_id) AS DOUBLE PRECISION) / nullif(count(*), 0) AS density "
            "FROM papers p LEFT JOIN sae_codes c ON c.doc_id = p.doc_id AND c.model_id = ? AND c.feature_id = ? WHERE p.corpus = ?",
            (corpus, model_id, feature_id, corpus),
        )[0]
    page["trend"] = records(
        backend, "SELECT year, n_docs, share_of_year FROM feature_trends WHERE model_id = ? AND feature_id = ? AND year IS NOT NULL ORDER BY year",
        (model_id, feature_id),
    )
    page["related"] = related_features(backend, model_id, feature_id)
    page["other_models"] = records(
        backend,
        "SELECT x.other_model_id, m.name AS other_model, m.version AS other_version, x.other_feature_id, x.other_label, x.cosine, "
        "x.mutual, x.matched_by FROM feature_lineage x JOIN sae_models m ON m.model_id = x.other_model_id AND m.status = 'ready' "
        "WHERE x.model_id = ? AND x.feature_id = ? ORDER BY x.other_model_id",
        (model_id, feature_id),
    )
    return page


def related_features(backend: Backend, model_id: int, feature_id: int, count: int = 6) -> dict[str, list[dict[str, Any]]]:
    """The paper's neighbours: features whose decoder directions are most and least aligned with this one's."""
    decoder = backend.decoder(model_id)
    unit = decoder / np.linalg.norm(decoder, axis=1, keepdims=True)
    cosine = unit @ unit[feature_id]
    order = [int(f) for f in np.argsort(-cosine, kind="stable") if f != feature_id]
    nearest, farthest = order[:count], order[::-1][:count]
    labels = labels_of(backend, model_id, nearest + farthest)
    return {side: [{"feature_id": f, "label": labels.get(f), "cosine": _plain(cosine[f])} for f in features]
            for side, features in (("top", nearest), ("bottom", farthest))}


def families(backend: Backend, model_id: int) -> list[dict[str, Any]]:
    check_model(backend, model_id)
    return records(
        backend, "SELECT family_id, label, root_feature, size, iteration FROM feature_families WHERE model_id = ? ORDER BY size DESC, family_id",
        (model_id,),
    )


def family(backend: Backend, model_id: int, family_id: int) -> dict[str, Any]:
    check_model(backend, model_id)
    head = records(
        backend, "SELECT family_id, label, root_feature, size, iteration, f1, pearson FROM feature_families WHERE model_id = ? AND family_id = ?",
        (model_id, family_id),
    )
    if not head:
        raise ApiError(404, f"model {model_id} has no family {family_id}")
    head[0]["members"] = records(
        backend,
        "SELECT m.feature_id, m.parent_id, m.depth, l.label FROM family_members m "
        "LEFT JOIN feature_best_labels l ON l.model_id = m.model_id AND l.feature_id = m.feature_id "
        "WHERE m.model_id = ? AND m.family_id = ? ORDER BY m.depth, m.feature_id",
        (model_id, family_id),
    )
    return head[0]


CORPUS_TOP_FEATURES = """
SELECT c.feature_id, l.label, CAST(count(*) AS DOUBLE PRECISION) / (SELECT count(*) FROM papers WHERE corpus = ?) AS density,
       avg(c.activation) AS mean_activation, l.pearson AS interpretability
FROM sae_codes c JOIN papers p ON p.doc_id = c.doc_id
LEFT JOIN feature_best_labels l ON l.model_id = c.model_id AND l.feature_id = c.feature_id
WHERE c.model_id = ? AND p.corpus = ?
GROUP BY c.feature_id, l.label, l.pearson ORDER BY count(*) DESC, c.feature_id LIMIT 15
"""


def dashboard(backend: Backend, model_id: int, corpus: str | None = None) -> dict[str, Any]:
    """The model's dashboard; with ``corpus``, its most common features and papers per year
    are those of that corpus."""
    info = check_model(backend, model_id)
    check_corpus(backend, corpus)
    totals = backend.query(
        "SELECT count(*), avg(density), (SELECT count(DISTINCT feature_id) FROM feature_labels WHERE model_id = ?), "
        "(SELECT avg(pearson) FROM feature_best_labels WHERE model_id = ?) FROM feature_stats WHERE model_id = ?",
        (model_id, model_id, model_id),
    )[0]
    return {
        "model": {k: info[k] for k in ("model_id", "name", "version", "n_latents", "k", "n_documents")},
        "active_features": totals[0], "mean_density": _plain(totals[1]), "labelled_features": totals[2],
        "mean_interpretability": _plain(totals[3]),
        "density_histogram": records(
            backend, "SELECT floor(log10(density) * 4) / 4 AS log10_density, count(*) AS count FROM feature_stats WHERE model_id = ? GROUP BY 1 ORDER BY 1",
            (model_id,),
        ),
        "interpretability_histogram": records(
            backend, "SELECT floor(pearson * 10) / 10 AS pearson_bin, count(*) AS count FROM feature_best_labels "
            "WHERE model_id = ? AND pearson IS NOT NULL GROUP BY 1 ORDER BY 1", (model_id,),
        ),
        "corpus": corpus,
        "top_features": records(backend, CORPUS_TOP_FEATURES, (corpus, model_id, corpus)) if corpus is not None else records(
            backend, "SELECT feature_id, label, density, mean_activation, interpretability FROM feature_summary "
            "WHERE model_id = ? ORDER BY n_docs DESC, feature_id LIMIT 15", (model_id,),
        ),
        "documents_per_year": records(
            backend, "SELECT year, count(*) AS count FROM papers WHERE year IS NOT NULL"
            + (" AND corpus = ?" if corpus is not None else "") + " GROUP BY year ORDER BY year", (corpus,) if corpus is not None else (),
        ),
        "evaluation": latest_evaluation(backend, model_id),
    }


EVAL_COLUMNS = ("run_id", "judge", "rewriter", "queries", "method", "a_up", "a_down", "n_cases", "cosine",
                "up_accuracy", "down_accuracy")


def latest_evaluation(backend: Backend, model_id: int) -> list[dict[str, Any]]:
    """The latest `saedb eval` run of each judge: accuracy against cosine per method and strengths."""
    rows = records(backend, f"SELECT {', '.join(EVAL_COLUMNS)} FROM eval_latest WHERE model_id = ? "
                                  "ORDER BY judge, method, a_up, a_down", (model_id,))
    runs: dict[int, dict[str, Any]] = {}
    for row in rows:
        run = runs.setdefault(row["run_id"], {k: row[k] for k in ("run_id", "judge", "rewriter", "queries")} | {"results": []})
        run["results"].append({k: row[k] for k in EVAL_COLUMNS[4:]})
    return list(runs.values())
