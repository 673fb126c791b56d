"""One evaluation run: cases × interventions × grid, judged, aggregated and stored in SQL.

Retrieval is exact cosine top-k over the database's own vectors, computed in numpy in this
process (thousands of searches per run); it returns what ``saedb.search`` returns with exact
search (DuckDB; Postgres without its approximate HNSW index), which a test checks against the
SQL search with ``steer_many`` on both backends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from saedb.backends import Backend
from saedb.backends.exact_index import ExactIndex, unhashed
from saedb.embedders import Embedder
from saedb.errors import InvalidInputError
from saedb.llm import MalformedReplyError
from saedb.evaluation.cases import N_OPTIONS, Case, Query, build_cases
from saedb.evaluation.interventions import GRIDS, Setting, add, clamp, random_at_cosine
from saedb.evaluation.judges import Doc, Judge
from saedb.evaluation.rewriters import Rewriter
from saedb.evaluation.topics import TopicKind, family_topics, topics_of
from saedb.sae import SAE, cosine


def exact_index(backend: Backend) -> ExactIndex:
    """All of the database's embeddings in an in-process exact index."""
    index = ExactIndex()
    count, last, total = backend.query("SELECT count(*), coalesce(max(doc_id), 0), coalesce(sum(doc_id), 0) FROM embeddings")[0]
    index.refresh((int(count), int(last), int(total), 0), unhashed(backend.embedding_range))  # a snapshot: no hashes needed
    if not len(index.doc_ids):
        raise InvalidInputError("the database has no embeddings: run `saedb load` first")
    return index


class Documents:
    """Papers by doc id, fetched once."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cache: dict[int, Doc] = {}

    def get(self, doc_ids: Sequence[int]) -> list[Doc]:
        missing = [d for d in doc_ids if d not in self.cache]
        if missing:
            marks = ", ".join("?" * len(missing))
            for doc_id, title, abstract, categories in self.backend.query(
                f"SELECT doc_id, title, abstract, categories FROM papers WHERE doc_id IN ({marks})", missing
            ):
                self.cache[doc_id] = Doc(doc_id, title, abstract, tuple(categories))
        return [self.cache[d] for d in doc_ids]


@dataclass
class Tally:
    cosines: list[float] = field(default_factory=list)
    up: list[bool] = field(default_factory=list)
    down: list[bool] = field(default_factory=list)
    unanswered: int = 0


@dataclass(frozen=True)
class ResultRow:
    method: str
    a_up: float | None
    a_down: float | None
    n_cases: int
    cosine: float
    up_accuracy: float
    down_accuracy: float
    unanswered: int


@dataclass
class EvalRun:
    model_id: int
    judge: str
    rewriter: str
    queries: str
    n_queries: int
    seed: int
    grid: str
    rows: list[ResultRow]
    run_id: int | None = None


def variants(sae: SAE, case: Case, kind: TopicKind, grid: str, rewritten: np.ndarray | None, rng: np.random.Generator,
             rewriter_name: str) -> Iterable[tuple[Setting, np.ndarray]]:
    """Every modified query of a case. Families are steered by addition only; the controls
    (unmodified query, random direction at the cosine of each addition) and rewriting run on
    the feature-level cases."""
    ups, downs = GRIDS[grid]
    prefix = "family-" if kind == "families" else ""
    if not prefix:
        yield Setting("unmodified", 0.0, 0.0), case.vector
        if rewritten is not None:  # None: the rewrite was refused (checked_rewrite)
            yield Setting(f"rewrite:{rewriter_name}"), rewritten
    for a_up in ups:
        for a_down in downs:
            steered = add(sae, case, a_up, a_down)
            yield Setting(f"{prefix}add", a_up, a_down), steered
            if not prefix:
                yield Setting("random-direction", a_up, a_down), random_at_cosine(case.vector, cosine(case.vector, steered), rng)
        if not prefix:
            yield Setting("clamp", a_up, 0.0), clamp(sae, case, a_up)


# A rewrite keeps the query ("do not change the query too much"): over 30 astro-ph title queries,
# '<query> and <topic>' and '<query> and <topic> but less about <topic>' keep a cosine to the query
# of at least 0.55 (wordllama-256) / 0.57 (MiniLM), median 0.80 / 0.84, while the echoes a small
# model returned ('<the rewritten query> mendatang', 'FINAL: <the rewritten query>') have at most
# 0.05. Below this bound the reply is not a rewrite of the query and is refused.
REWRITE_MIN_COSINE = 0.3


def checked_rewrite(embedder: Embedder, rewriter: Rewriter, case: Case) -> np.ndarray | None:
    """The rewritten query's vector, or None when the rewriter gave no well-formed rewrite or
    one that is not a rewrite of the query (cosine below REWRITE_MIN_COSINE)."""
    try:
        text = rewriter.rewrite(case.query.text, case.up, case.down)
    except MalformedReplyError:
        return None
    vector = embedder.embed([text])[0]
    return vector if cosine(case.vector, vector) >= REWRITE_MIN_COSINE else None


def run_evaluation(
    backend: Backend,
    model_id: int,
    embedder: Embedder,
    judge: Judge,
    queries: Sequence[Query],
    rewriter: Rewriter,
    queries_source: str,
    grid: str = "paper",
    seed: int = 0,
    top: int = 10,
    progress: Callable[[Iterable[Case]], Iterable[Case]] = lambda cases: cases,
    category_precision: float = 0.6,
) -> EvalRun:
    """Judge every modified query of every case against the unmodified query's results."""
    if grid not in GRIDS:
        raise InvalidInputError(f"grid must be one of {', '.join(GRIDS)}, not {grid!r}")
    sae = backend.load_sae(model_id)
    vectors = embedder.embed([q.text for q in queries])
    codes = sae.encode(vectors)
    topics = {judge.kind: topics_of(backend, model_id, judge.kind, category_precision)}
    families = family_topics(backend, model_id) if judge.kind == "labels" else []
    if len({t.key for t in families}) >= N_OPTIONS:  # family steering is evaluated where families exist
        topics["families"] = families
    cases = {kind: build_cases(queries, vectors, codes, kind_topics, kind, seed) for kind, kind_topics in topics.items()}
    if not cases[judge.kind]:
        raise InvalidInputError("no query has an active topic to steer away from: use other queries")
    index, documents = exact_index(backend), Documents(backend)
    judge_rng, direction_rng = random.Random(seed), np.random.default_rng(seed)
    tallies: dict[Setting, Tally] = {}
    for kind, kind_cases in cases.items():
        for case in progress(kind_cases):
            rewritten = checked_rewrite(embedder, rewriter, case) if kind != "families" else case.vector
            settings, modified = zip(*variants(sae, case, kind, grid, rewritten, direction_rng, rewriter.name))
            results = index.top(np.stack([case.vector, *modified]), top, exclude=case.query.own_doc)
            before = documents.get(results[0])
            for setting, vector, doc_ids in zip(settings, modified, results[1:]):
                up, down = judge.choose(case.options, before, documents.get(doc_ids), judge_rng)
                tally = tallies.setdefault(setting, Tally())
                tally.cosines.append(cosine(case.vector, vector))
                tally.up.append(up == case.up_option)
                tally.down.append(down == case.down_option)
                tally.unanswered += up is None
    rows = [ResultRow(s.method, s.a_up, s.a_down, len(t.up), float(np.mean(t.cosines)), float(np.mean(t.up)),
                      float(np.mean(t.down)), t.unanswered) for s, t in tallies.items()]
    return EvalRun(model_id, judge.name, rewriter.name, queries_source, len(queries), seed, grid, rows)


def store_run(backend: Backend, run: EvalRun) -> int:
    """Write the run and its rows in one transaction; returns the run id."""
    with backend.transaction():
        run_id = int(backend.query(
            "INSERT INTO eval_runs (model_id, judge, rewriter, queries, n_queries, seed, grid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
            (run.model_id, run.judge, run.rewriter, run.queries, run.n_queries, run.seed, run.grid),
        )[0][0])
        for row in run.rows:
            backend.execute(
                "INSERT INTO eval_results (run_id, method, a_up, a_down, n_cases, cosine, up_accuracy, down_accuracy, "
                "unanswered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, row.method, row.a_up, row.a_down, row.n_cases, row.cosine, row.up_accuracy,
                 row.down_accuracy, row.unanswered),
            )
    run.run_id = run_id
    return run_id


def load_run(backend: Backend, run_id: int) -> EvalRun:
    """A stored run, as ``store_run`` wrote it."""
    head = backend.query("SELECT model_id, judge, rewriter, queries, n_queries, seed, grid FROM eval_runs WHERE run_id = ?", (run_id,))
    if not head:
        raise InvalidInputError(f"no evaluation run {run_id}")
    rows = backend.query("SELECT method, a_up, a_down, n_cases, cosine, up_accuracy, down_accuracy, unanswered FROM eval_results "
                         "WHERE run_id = ? ORDER BY method, a_up, a_down", (run_id,))
    return EvalRun(*head[0], rows=[ResultRow(*row) for row in rows], run_id=run_id)
