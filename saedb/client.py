"""saedb for notebooks and scripts: SQL in, Arrow tables out.

    import saedb
    db = saedb.connect("ml.duckdb")            # or a postgresql:// URL
    db.sql("SELECT * FROM feature_summary WHERE model_id = ?", [1]).to_pandas()
    polars.from_arrow(db.search("graph neural networks", model="ml32", label="molecules", strength=0.8))
    db.diff("ml32", "year < 2012", "year >= 2016").to_pandas()   # features that set the sets apart
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager
from typing import Any, Sequence

import pyarrow as pa

from saedb.analytics import enrichment, predictors, slopes
from saedb.backends import DEFAULT_DB, Backend
from saedb.backends import connect as open_backend
from saedb.concepts import steering_note
from saedb.embedders import get_embedder
from saedb.errors import InvalidInputError
from saedb.models import resolve_model
from saedb.search import chosen_steering, document_vector, search


class Database:
    """A saedb database (DuckDB file or Postgres URL) with saedb's SQL functions available."""

    def __init__(self, url: str = DEFAULT_DB, read_only: bool = False, create: bool = False) -> None:
        self.backend: Backend = open_backend(url, read_only=read_only, create=create)

    def sql(self, query: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement (``?`` placeholders) and return its rows with their column names."""
        return self.backend.arrow(query, params)

    def model_id(self, model: int | str) -> int:
        """A model id, or the latest published version of a model name (UnknownModelError if none)."""
        return resolve_model(self.backend, model)

    def search(self, text: str | None = None, model: int | str | None = None, *, like: str | None = None,
               feature: int | None = None, label: str | None = None, family: int | None = None, strength: float = 0.5,
               limit: int = 10, corpus: str | None = None, year_from: int | None = None, year_to: int | None = None,
               exact: bool = False) -> pa.Table:
        """Nearest papers to ``text``, or to the document ``like`` names (its arXiv id or an attached
        table's key: no text embedder needed), within ``corpus`` and the years given, optionally
        steered along a feature, a label or a family; ``exact``: every document ranked, not the HNSW index."""
        if (text is None) == (like is None):
            raise InvalidInputError("give a search text or like=KEY (one of them)")
        steering = chosen_steering(feature, label, family, strength, (lambda: self.model_id(model)) if model is not None else None)
        if model is not None and not steering:
            self.model_id(model)  # a model named is checked, steered by or not
        embedder = get_embedder(self.backend.require_embedder()[0]) if like is None or label is not None else None
        if label is not None and steering:
            note, by_label = steering_note(self.backend, steering[0].model_id, label, embedder)
            if not by_label:  # the nearest feature was taken: say which
                warnings.warn(note, stacklevel=2)
        vector = document_vector(self.backend, like) if like is not None else embedder.embed([text])[0]
        hits = search(self.backend, vector, limit, steering, corpus, year_from, year_to, exact)
        return pa.table({
            "doc_id": pa.array([h.doc_id for h in hits], pa.int64()), "arxiv_id": [h.arxiv_id for h in hits],
            "title": [h.title for h in hits], "year": pa.array([h.year for h in hits], pa.int32()),
            "distance": pa.array([h.distance for h in hits], pa.float64()),
        })

    def features(self, model: int | str) -> pa.Table:
        """The feature_summary view of a model: label, interpretability, density, family."""
        return self.sql("SELECT * FROM feature_summary WHERE model_id = ? ORDER BY feature_id", (self.model_id(model),))

    def diff(self, model: int | str, a: str, b: str | None = None) -> pa.Table:
        """Features over- and under-represented in the documents matching predicate ``a`` against
        those matching ``b`` (None: all the others): shares, log odds ratio with its 95% interval,
        Fisher's exact p-value and the Benjamini-Hochberg q-value."""
        return enrichment(self.backend, self.model_id(model), a, b)

    def predictors(self, model: int | str, column: str) -> pa.Table:
        """Per value of a categorical column (an SQL expression), the features that predict it:
        precision, recall, f1 and lift, ranked by f1."""
        return predictors(self.backend, self.model_id(model), column)

    def slopes(self, model: int | str, column: str) -> pa.Table:
        """Per feature, the trend of its firing along a numeric column (year): slope per unit with
        its 95% interval, p- and q-value."""
        return slopes(self.backend, self.model_id(model), column)

    def snapshot(self) -> AbstractContextManager[None]:
        """One read-only transaction (``Backend.snapshot``): everything inside sees the database as
        it was when it began; on a writable DuckDB file, searches inside run at the graph's speed."""
        return self.backend.snapshot()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str = DEFAULT_DB, read_only: bool = False, create: bool = False) -> Database:
    """Open a saedb database: a DuckDB file path or a postgresql:// URL. A DuckDB file that does
    not exist is an error (a misspelt path), unless ``create`` asks for a new, empty database."""
    return Database(url, read_only=read_only, create=create)
