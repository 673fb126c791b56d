"""Comparative analytics as Arrow tables: the SQL entry points of analytics.sql, called with
checked arguments, their database errors turned into one clear InvalidInputError.

    feature_enrichment(model, set_a, set_b)   features over- and under-represented in A against B
    feature_predictors(model, column)         per value of a categorical column, the features predicting it
    feature_slopes(model, column)             per feature, its linear trend along a numeric column

Sets are SQL predicates and columns SQL expressions over ``document_metadata`` (papers' columns,
or an attached table's own), in the database's dialect: ``year < 2015``,
``'astro-ph.EP' = ANY(categories)`` (both dialects), ``unnest(categories)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from saedb.backends import DATABASE_ERRORS, Backend, user_message
from saedb.errors import InvalidInputError


def _run(backend: Backend, function: str, model_id: int, **inputs: str | None) -> pa.Table:
    """Call ``function`` after binding each predicate or column alone (so that an error names the
    input at fault); an error of the call itself is named after the function."""
    for name, text in inputs.items():
        if text is None:
            continue
        probe = (f"SELECT 1 FROM document_metadata WHERE ({text}) LIMIT 0" if name.startswith("set")
                 else f"SELECT ({text}) FROM document_metadata LIMIT 0")
        try:
            backend.query(probe)
        except DATABASE_ERRORS as exc:
            raise InvalidInputError(f"{function}: {name.replace('_', ' ')} ({text}): {user_message(exc)}") from exc
    try:
        return backend.arrow(f"SELECT * FROM {function}(?{', ?' * len(inputs)})", (model_id, *inputs.values()))
    except DATABASE_ERRORS as exc:
        message = user_message(exc)
        raise InvalidInputError(message if function in message else f"{function}: {message}") from exc


def _sql_text(what: str, text: str | None) -> str:
    if text is None or not text.strip():
        raise InvalidInputError(f"{what} is empty")
    return text.strip()


def enrichment(backend: Backend, model_id: int, set_a: str, set_b: str | None = None) -> pa.Table:
    """Every feature's activity in set A against set B (None: the other encoded documents), with
    Fisher's exact p-value and the Benjamini-Hochberg q-value; most significant first."""
    return _run(backend, "feature_enrichment", model_id, set_A=_sql_text("set A", set_a),
                set_B=None if set_b is None else _sql_text("set B", set_b))


def predictors(backend: Backend, model_id: int, column: str) -> pa.Table:
    """Per value of a categorical column, the features ranked by how well they predict it."""
    return _run(backend, "feature_predictors", model_id, column=_sql_text("column", column))


def slopes(backend: Backend, model_id: int, column: str) -> pa.Table:
    """Per feature, the slope of its firing along a numeric column, most significant first."""
    return _run(backend, "feature_slopes", model_id, column=_sql_text("column", column))
