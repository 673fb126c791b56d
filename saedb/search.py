"""Steered semantic search: move the query embedding along a feature, a labelled feature or
a family, then rank documents by cosine distance.

The query is written once in saedb's Postgres flavour (pgvector's ``<=>``) and runs on
either backend through ``saedb.dialects`` (DuckDB: ``array_cosine_distance``); on Postgres
the ORDER BY uses the HNSW index. On DuckDB the steered query vector is computed by the same
SQL and ranked in process (``Backend.nearest``): by the HNSW graph beside the file where one
was built (saedb/backends/approximate_index.py), else exactly, which returns what SEARCH_SQL
returns at a fraction of its time; SEARCH_SQL is what other DuckDB clients run. ``exact=True``
ranks every row on either backend.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Callable, Literal, Sequence

import numpy as np

from saedb.backends import Backend
from saedb.dialects import prepare
from saedb.errors import InvalidInputError, require_at_least_one
from saedb.sae import cosine

SteerBy = Literal["feature", "label", "family"]
Scale = Literal["toward", "add"]
STEER_BY: tuple[SteerBy, ...] = ("feature", "label", "family")
# One call per group of consecutive feature steerings of a model; labels and families nest one call each.
MANY_FUNCTIONS: dict[Scale, str] = {"add": "steer_many", "toward": "steer_toward_many"}
NESTED_CALLS: dict[tuple[Scale, str], str] = {
    ("add", "label"): "steer_label({target}, ${what}, ${strength}, ${model})",
    ("add", "family"): "steer_family({target}, ${what}, ${strength}, ${model})",
    ("toward", "label"): "steer_toward({target}, sae_feature_by_label(${what}, ${model}), ${strength}, ${model})",
    ("toward", "family"): "steer_toward_family({target}, ${what}, ${strength}, ${model})",
}

# The steered vector is a scalar subquery: computed once, before the scan (on Citus on the
# coordinator, whose result every shard's HNSW scan receives; a function call in the ORDER BY
# itself would be pushed to the shards, where Citus refuses the reads of reference tables it makes).
SEARCH_SQL = """
SELECT p.doc_id, p.arxiv_id, p.title, p.year, e.embedding <=> (SELECT {target}) AS distance
FROM embeddings e JOIN papers p ON p.doc_id = e.doc_id {where}
ORDER BY e.embedding <=> (SELECT {target})
LIMIT $2
"""


@dataclass(frozen=True)
class Steering:
    """One steering of a query. ``scale`` says what ``strength`` means:
    - "toward" (the default of search, the app and the CLI): the fraction of the angle from the
      query to the feature's (or family's) direction, -1..1: 0.5 is equally close to both,
      the same for every query and feature (``steer_toward`` in SQL);
    - "add": the query plus strength times the decoder direction, the paper's intervention and
      evaluation grid (``steer`` in SQL), whose effect depends on how far the feature is from
      the query."""

    by: SteerBy
    target: int | str  # feature id, label text or family id
    strength: float
    model_id: int
    scale: Scale = "toward"

    def __post_init__(self) -> None:
        if self.scale not in MANY_FUNCTIONS:
            raise InvalidInputError(f"steering scale must be toward or add, not {self.scale!r}")
        if self.scale == "toward" and not -1 <= self.strength <= 1:
            raise InvalidInputError(f"a steering fraction must be between -1 and 1, got {self.strength}")


@dataclass(frozen=True)
class Hit:
    doc_id: int
    arxiv_id: str
    title: str
    year: int | None
    distance: float


def chosen_steering(feature: int | None, label: str | None, family: int | None, strength: float,
                    model: Callable[[], int] | None) -> list[Steering]:
    """The steering asked for by at most one of feature, label and family (none: a plain
    search); ``model`` resolves the model to steer with, None when no model was named."""
    chosen: list[tuple[SteerBy, int | str]] = [
        (by, value) for by, value in (("feature", feature), ("label", label), ("family", family)) if value is not None]
    if not chosen:
        return []
    if len(chosen) > 1 or model is None:
        raise InvalidInputError("steer by one of feature, label or family, with a model")
    return [Steering(chosen[0][0], chosen[0][1], strength, model())]


def run_portable(backend: Backend, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Run saedb-postgres SQL (``$n`` / ``?`` placeholders) on any backend."""
    bound = backend.embedder()
    text, ordered = prepare(sql, backend.dialect, params, dim=bound[1] if bound else None)
    return backend.query(text, [backend.vector_param(p) if isinstance(p, np.ndarray) else p for p in ordered])


MAX_NESTED_STEERING = 16  # label/family steerings per query: each nests one SQL call


@dataclass(frozen=True)
class Within:
    """Which papers a search may return: one corpus and/or a range of years, both ends included."""

    corpus: str | None = None
    year_from: int | None = None
    year_to: int | None = None

    def __post_init__(self) -> None:
        if self.year_from is not None and self.year_to is not None and self.year_from > self.year_to:
            raise InvalidInputError(f"year_from {self.year_from} is after year_to {self.year_to}")

    def conditions(self) -> list[tuple[str, Any]]:
        """(SQL over papers with one ``{}`` for the placeholder, value) per condition."""
        parts = [("corpus = {}", self.corpus), ("year >= {}", self.year_from), ("year <= {}", self.year_to)]
        return [(sql, value) for sql, value in parts if value is not None]

    def described(self) -> str:
        """The conditions as a reader says them: corpus 'hh_astro', year >= 2000."""
        parts = [f"corpus {self.corpus!r}" if self.corpus is not None else None,
                 f"year >= {self.year_from}" if self.year_from is not None else None,
                 f"year <= {self.year_to}" if self.year_to is not None else None]
        return ", ".join(part for part in parts if part)


def document_vector(backend: Backend, key: str) -> np.ndarray:
    """The embedding of the document whose id (arXiv id; an attached table's key) is ``key``: the
    query of a search for documents like it, which needs no text embedder."""
    vectors = backend.fetch_vectors("SELECT e.embedding FROM embeddings e JOIN papers p ON p.doc_id = e.doc_id "
                                    "WHERE p.arxiv_id = ?", (key,))
    if not len(vectors):
        raise InvalidInputError(f"no document {key!r} here (documents are named by their arXiv id, or an attached table's key)")
    return vectors[0]


def check_corpus(backend: Backend, corpus: str | None) -> None:
    """InvalidInputError when no paper is of ``corpus`` (None: no corpus asked for): a misspelt
    name is not a corpus without matches."""
    if corpus is None:
        return
    corpora = [name for (name,) in backend.query("SELECT DISTINCT corpus FROM papers ORDER BY corpus")]
    if corpus not in corpora:
        raise InvalidInputError(f"no corpus {corpus!r} here (corpora: {', '.join(corpora) or 'none'})")


def steered_in_process(backend: Backend, query: np.ndarray, steps: Sequence[Steering]) -> np.ndarray | None:
    """The steered query computed here from the weights the backend's SQL functions use, when
    every steering is by feature and the backend keeps weights in process (DuckDB: no SQL
    statement, no 384-float parameter to bind); None: SQL computes it. The SQL functions stay
    the reference: tests/test_search.py checks both give the same vector."""
    if not all(step.by == "feature" for step in steps):
        return None
    vector = query
    for (model_id, scale), group in groupby(steps, key=lambda s: (s.model_id, s.scale)):
        function = MANY_FUNCTIONS[scale]
        try:
            sae = backend.steering_model(model_id)
            if sae is None:
                return None
            run = list(group)
            steer = sae.steer if scale == "add" else sae.steer_toward
            vector = steer(vector, [int(s.target) for s in run], [float(s.strength) for s in run])[0]
        except (InvalidInputError, LookupError) as exc:  # as SQL's functions say it
            raise InvalidInputError(f"{function}: {exc}") from None
    return vector


def search(
    backend: Backend, query: np.ndarray, limit: int = 10, steering: Steering | Sequence[Steering] = (),
    corpus: str | None = None, year_from: int | None = None, year_to: int | None = None, exact: bool = False,
) -> list[Hit]:
    """Nearest documents to ``query``, steered by each steering in turn, optionally only those of
    one corpus and range of years (Postgres: an iterative HNSW scan keeps the index in use).
    Consecutive feature steerings of one model become a single steer_many call, so any number of
    them keeps the SQL flat; label and family steerings nest one call each (at most
    MAX_NESTED_STEERING). Ranked by the backend's approximate index where it has one (DuckDB:
    the HNSW graph, when built; Postgres: HNSW), unless ``exact``: then by every row."""
    require_at_least_one(limit=limit)
    within = Within(corpus, year_from, year_to)
    steps = [steering] if isinstance(steering, Steering) else list(steering)
    for step in steps:
        if step.by not in STEER_BY:
            raise InvalidInputError(f"steer by one of {', '.join(STEER_BY)}, not {step.by!r}")
    if sum(step.by != "feature" for step in steps) > MAX_NESTED_STEERING:
        raise InvalidInputError(f"steer by at most {MAX_NESTED_STEERING} labels and families at once")
    params: list[Any] = [np.asarray(query, dtype=np.float32), limit]
    target = "$1::vector"
    for group in groupby(steps, key=lambda s: (s.by, s.model_id, s.scale) if s.by == "feature" else id(s)):
        run = list(group[1])
        if run[0].by == "feature":
            params += [[int(s.target) for s in run], [float(s.strength) for s in run], run[0].model_id]
            n = len(params)
            target = f"{MANY_FUNCTIONS[run[0].scale]}({target}, ${n - 2}::integer[], ${n - 1}::double precision[], ${n})"
        else:
            params += [run[0].target, float(run[0].strength), run[0].model_id]
            n = len(params)
            target = NESTED_CALLS[(run[0].scale, run[0].by)].format(target=target, what=n - 2, strength=n - 1, model=n)
    if not backend.in_process_search:
        conditions = []
        for sql, value in within.conditions():
            params.append(value)
            conditions.append("p." + sql.format(f"${len(params)}"))
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        sql = SEARCH_SQL.format(target=target, where=where)
        with backend.exact_scan() if exact else nullcontext():
            rows = run_portable(backend, sql, params)
    else:
        vector = steered_in_process(backend, params[0], steps) if steps else params[0]
        if vector is None:
            vector = run_portable(backend, f"SELECT {target}", params)[0][0]
        parts = within.conditions()
        where = (" AND ".join(sql.format("?") for sql, _ in parts), [value for _, value in parts]) if parts else None
        vector = np.asarray(vector, dtype=np.float32)
        rows = backend.nearest(vector, limit, where, exact, steered_cosine=cosine(params[0], vector) if steps else None)
    if not rows:
        check_corpus(backend, corpus)
    return [Hit(*row[:4], float(row[4])) for row in rows]
