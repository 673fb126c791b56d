"""Search and analytics: steered search, set differences, predictors, trends, raw SQL."""

from __future__ import annotations

import re
from typing import Optional

import typer

from saedb.analytics import enrichment
from saedb.analytics import predictors as feature_predictors
from saedb.analytics import slopes as feature_slopes
from saedb.backends import connect
from saedb.cli.common import USER_ERRORS, DbOption, app, echo_table, fail, label_of
from saedb.concepts import steering_note
from saedb.embedders import get_embedder
from saedb.errors import InvalidInputError
from saedb.models import resolve_model


@app.command()
def search(
    query: Optional[str] = typer.Argument(None, help="Search text (or --like)."),
    like: Optional[str] = typer.Option(None, help="Search for documents like this one (its arXiv id, or an attached "
                                                  "table's key) instead of a text: no text embedder needed."),
    db: str = DbOption,
    model: Optional[str] = typer.Option(None, help="Model id or name, to steer."),
    feature: Optional[int] = typer.Option(None, help="Steer along this feature."),
    label: Optional[str] = typer.Option(None, help="Steer along the feature with this label."),
    family: Optional[int] = typer.Option(None, help="Steer along this family."),
    strength: float = typer.Option(0.5, help="Steering strength (negative steers away)."),
    limit: int = typer.Option(10),
    corpus: Optional[str] = typer.Option(None, help="Only papers of this corpus (saedb load names it after the file)."),
    year_from: Optional[int] = typer.Option(None, help="Only papers of this year or later."),
    year_to: Optional[int] = typer.Option(None, help="Only papers of this year or earlier."),
    exact: bool = typer.Option(False, help="Rank every document, not the approximate index (HNSW)."),
) -> None:
    """Semantic search, optionally steered by a feature, a label or a family."""
    from saedb.search import Within, chosen_steering, document_vector
    from saedb.search import search as run_search

    try:
        with connect(db, read_only=True) as backend:
            steering = chosen_steering(feature, label, family, strength,
                                       (lambda: resolve_model(backend, model)) if model is not None else None)
            if model is not None and not steering:
                resolve_model(backend, model)  # a model named is checked, steered by or not
            if (query is None) == (like is None):
                raise InvalidInputError("give a search text or --like KEY (one of them)")
            if like is None and not query.strip():
                raise InvalidInputError("the search text is empty")
            embedder = get_embedder(backend.require_embedder()[0]) if like is None or label is not None else None
            if label is not None and steering:
                typer.echo(steering_note(backend, steering[0].model_id, label, embedder)[0], err=True)
            vector = document_vector(backend, like) if like is not None else embedder.embed([query])[0]
            hits = run_search(backend, vector, limit, steering, corpus, year_from, year_to, exact)
            for hit in hits:
                typer.echo(f"{hit.distance:.3f}  {hit.arxiv_id}  {hit.year}  {hit.title}")
            if not hits:
                typer.echo(" ".join(("no paper matches", Within(corpus, year_from, year_to).described())).strip(), err=True)
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def diff(
    model: str = typer.Argument(..., help="Model id or name."),
    a: str = typer.Option(..., "--a", help="Set A: an SQL predicate over document_metadata, e.g. \"year < 2015\"."),
    b: Optional[str] = typer.Option(None, "--b", help="Set B (disjoint from A); default: every other encoded document."),
    top: int = typer.Option(10, min=1, help="Features shown each way."),
    db: str = DbOption,
) -> None:
    """The features over- and under-represented in set A against set B (Fisher's exact test,
    Benjamini-Hochberg q-values over all features tested); db.diff() returns every row."""
    try:
        with connect(db, read_only=True) as backend:
            rows = enrichment(backend, resolve_model(backend, model), a, b).to_pylist()
    except USER_ERRORS as exc:
        fail(exc)
    first = rows[0]
    typer.echo(f"A: {first['a_total']} documents ({a}); B: {first['b_total']} documents ({b or 'the rest'}); "
               f"{len(rows)} features tested, {sum(r['q_value'] < 0.05 for r in rows)} with q < 0.05")
    header = "feature  share A  share B  log odds [95% CI]      p         q         label"
    line = lambda r: (f"{r['feature_id']:>7}  {r['a_share']:7.3f}  {r['b_share']:7.3f}  {r['log_odds']:+6.2f} "  # noqa: E731
                      f"[{r['log_odds_low']:+.2f}, {r['log_odds_high']:+.2f}]  {r['p_value']:.2e}  {r['q_value']:.2e}  {label_of(r)}")
    for title, sign in (("over-represented in A", 1), ("under-represented in A", -1)):
        chosen = [r for r in rows if sign * r["log_odds"] > 0][:top]
        echo_table(f"\n{title}:\n{header}", [line(r) for r in chosen])


@app.command()
def predictors(
    model: str = typer.Argument(..., help="Model id or name."),
    column: str = typer.Option(..., help="A categorical SQL expression over document_metadata, e.g. corpus or unnest(categories)."),
    top: int = typer.Option(3, min=1, help="Features shown per value."),
    db: str = DbOption,
) -> None:
    """For each value of a categorical column, the features that best predict it (by f1)."""
    try:
        with connect(db, read_only=True) as backend:
            rows = feature_predictors(backend, resolve_model(backend, model), column).to_pylist()
    except USER_ERRORS as exc:
        fail(exc)
    echo_table("value\tdocs\tfeature\tprecision\trecall\tf1\tlift\tlabel",
                [f"{r['value']}\t{r['value_docs']}\t{r['feature_id']}\t{r['precision']:.3f}\t{r['recall']:.3f}\t"
                 f"{r['f1']:.3f}\t{r['lift']:.2f}\t{label_of(r)}" for r in rows if r["rank"] <= top])


@app.command()
def slopes(
    model: str = typer.Argument(..., help="Model id or name."),
    column: str = typer.Option("year", help="A numeric SQL expression over document_metadata."),
    top: int = typer.Option(10, min=1, help="Features shown each way."),
    db: str = DbOption,
) -> None:
    """The features whose share of documents rises or falls most significantly along a numeric
    column: least-squares slope per unit with its 95% interval, p- and q-value."""
    try:
        with connect(db, read_only=True) as backend:
            rows = feature_slopes(backend, resolve_model(backend, model), column).to_pylist()
    except USER_ERRORS as exc:
        fail(exc)
    header = "feature  share   slope/unit [95% CI]            p         q         label"
    line = lambda r: (f"{r['feature_id']:>7}  {r['share']:.3f}  {r['slope']:+.5f} [{r['slope_low']:+.5f}, "  # noqa: E731
                      f"{r['slope_high']:+.5f}]  {r['p_value']:.2e}  {r['q_value']:.2e}  {label_of(r)}")
    for title, sign in (("rising", 1), ("falling", -1)):
        echo_table(f"{title} with {column}:\n{header}", [line(r) for r in rows if sign * r["slope"] > 0][:top])


READ_STATEMENTS = ("select", "with", "show", "describe", "explain", "table", "values")
LEADING = re.compile(r"(\s|\(|--[^\n]*(\n|$)|/\*.*?\*/)*", re.S)  # white space, parentheses and comments


def is_read_only(statement: str) -> bool:
    """Whether a statement only reads (then the database opens read-only, beside other processes)."""
    words = statement[LEADING.match(statement).end():].split(None, 1)
    return bool(words) and words[0].lower() in READ_STATEMENTS


# ignore_unknown_options: a statement that begins with a comment ("-- ...") is the argument, not an option.
@app.command(context_settings={"ignore_unknown_options": True})
def sql(query: str = typer.Argument(..., help="SQL to run; saedb's functions are available."), db: str = DbOption) -> None:
    """Run one SQL statement and print its column names, then its rows, as tab-separated values."""
    try:
        with connect(db, read_only=is_read_only(query), create=False) as backend:
            names, rows = backend.named_query(query)
            for row in ([tuple(names)] if names else []) + rows:
                typer.echo("\t".join(str(v) for v in row))
    except USER_ERRORS as exc:
        fail(exc)
