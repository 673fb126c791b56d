"""Steered semantic search: move the query embedding along a feature, a labelled feature or
a family, then rank documents by cosine distance.

The query is written once in saedb's Postgres flavour (pgvector's ``<=>``) and runs on
either backend through ``saedb.dialects`` (DuckDB: ``array_cosine_distance``); on Postgres
the ORDER BY uses the HNSW index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from saedb.backends import Backend
from saedb.dialects import prepare
from saedb.errors import InvalidInputError

SteerBy = Literal["feature", "label", "family"]
STEER_FUNCTIONS: dict[str, str] = {"feature": "steer", "label": "steer_label", "family": "steer_family"}

SEARCH_SQL = """
SELECT p.doc_id, p.arxiv_id, p.title, p.year, e.embedding <=> {target} AS distance
FROM embeddings e JOIN papers p ON p.doc_id = e.doc_id
ORDER BY e.embedding <=> {target}
LIMIT $2
"""


@dataclass(frozen=True)
class Steering:
    by: SteerBy
    target: int | str  # feature id, label text or family id
    strength: float
    model_id: int


@dataclass(frozen=True)
class Hit:
    doc_id: int
    arxiv_id: str
    title: str
    year: int | None
    distance: float


def run_portable(backend: Backend, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Run saedb-postgres SQL (``$n`` / ``?`` placeholders) on any backend."""
    bound = backend.embedder()
    text, ordered = prepare(sql, backend.dialect, params, dim=bound[1] if bound else None)
    return backend.query(text, [backend.vector_param(p) if isinstance(p, np.ndarray) else p for p in ordered])


def search(backend: Backend, query: np.ndarray, limit: int = 10, steering: Steering | None = None) -> list[Hit]:
    """Nearest documents to ``query``, optionally steered first."""
    if limit < 1:
        raise InvalidInputError("limit must be at least 1")
    query = np.asarray(query, dtype=np.float32)
    if steering is None:
        sql, params = SEARCH_SQL.format(target="$1::vector"), [query, limit]
    else:
        if steering.by not in STEER_FUNCTIONS:
            raise InvalidInputError(f"steer by one of {', '.join(STEER_FUNCTIONS)}, not {steering.by!r}")
        target = f"{STEER_FUNCTIONS[steering.by]}($1::vector, $3, $4, $5)"
        sql, params = SEARCH_SQL.format(target=target), [query, limit, steering.target, float(steering.strength), steering.model_id]
    return [Hit(*row[:4], float(row[4])) for row in run_portable(backend, sql, params)]
