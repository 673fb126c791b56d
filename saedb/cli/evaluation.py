"""Evaluation: steering against query rewriting (the paper's protocol) and its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saedb.backends import connect
from saedb.cli.common import USER_ERRORS, DbOption, MaxTokensOption, ProtocolOption, TimeoutOption, app, chat_model, fail, report_llm
from saedb.embedders import LOCAL_EMBEDDERS, get_embedder
from saedb.evaluation import file_queries, get_judge, get_rewriter, run_evaluation, store_run, title_queries
from saedb.evaluation.plot import plot_run
from saedb.evaluation.report import format_comparison, format_table
from saedb.evaluation.runner import load_run
from saedb.models import resolve_model


def plot_name(backend, run) -> str:
    """eval-<model name>-run<id>-<judge>: unique per database and model."""
    name = backend.model_row(run.model_id)["name"]
    return f"eval-{name}-run{run.run_id}-{run.judge.replace(':', '-')}"


@app.command("eval-plot")
def evaluation_plot(
    run_id: int = typer.Argument(..., help="An eval run id (table eval_runs)."),
    db: str = DbOption,
    plot: Path = typer.Option(Path("eval-plots"), help="Folder for the figure (PNG + SVG)."),
) -> None:
    """Print a stored evaluation run and draw its accuracy-vs-cosine figure again."""

    try:
        with connect(db, read_only=True) as backend:
            run = load_run(backend, run_id)
            paths = plot_run(run, plot / plot_name(backend, run))
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(format_table(run))
    typer.echo(format_comparison(run))
    typer.echo(f"figure: {', '.join(map(str, paths))}")


def default_judges(database_embedder: str) -> list[str]:
    """arXiv categories, and a local embedder other than the database's."""
    return ["categories", *(f"embedder:{name}" for name in LOCAL_EMBEDDERS if name != database_embedder)][:2]


@app.command("eval")
def evaluate_steering(
    model: str = typer.Argument(..., help="Model id or name (with labelled features)."),
    db: str = DbOption,
    judge: Optional[list[str]] = typer.Option(None, help="categories, embedder:NAME (not the database's embedder) or "
                                                          "llm:MODEL; repeat for several. Default: categories and the "
                                                          "other local embedder."),
    queries: Optional[Path] = typer.Option(None, help="Queries, one per line (default: titles of random papers, "
                                                      "each kept out of its own results)."),
    n_queries: int = typer.Option(50, help="How many corpus titles, without --queries."),
    rewriter: str = typer.Option("offline-rewrite", help="llm:MODEL for the paper's query rewriting; offline-rewrite "
                                                         "drops the down topic's words and appends the up topic; "
                                                         "naive-append only appends ('<query> and <topic>')."),
    grid: str = typer.Option("paper", help="paper (a_up 7 x a_down 6) or small (3 x 3)."),
    seed: int = typer.Option(0),
    category_precision: float = typer.Option(0.6, help="categories judge: a feature stands for a category when at "
                                                       "least this share of the papers it fires on are in it."),
    plot: Path = typer.Option(Path("eval-plots"), help="Folder for the accuracy-vs-cosine figures (PNG + SVG)."),
    protocol: str = ProtocolOption,
    max_tokens: Optional[int] = MaxTokensOption,
    timeout: Optional[float] = TimeoutOption,
) -> None:
    """Steering vs query rewriting with the paper's protocol; stores the run in eval_runs/eval_results."""
    from tqdm import tqdm

    try:
        with connect(db, create=False) as backend:
            model_id = resolve_model(backend, model)
            database_embedder = backend.require_embedder()[0]
            query_list = file_queries(queries) if queries else title_queries(backend, n_queries, seed)
            source = str(queries) if queries else f"{len(query_list)} corpus titles"
            chats = []

            def chat(name: str):
                chats.append(chat_model(backend, name, protocol, max_tokens, timeout, None)[0])
                return chats[-1]

            chosen_rewriter = get_rewriter(rewriter, chat)
            try:
                for spec in judge or default_judges(database_embedder):
                    chosen = get_judge(spec, backend, chat)
                    typer.echo(f"\njudge {chosen.name}, {len(query_list)} queries ({source}), rewriter {chosen_rewriter.name}")
                    run = run_evaluation(backend, model_id, get_embedder(database_embedder), chosen, query_list,
                                         chosen_rewriter, source, grid=grid, seed=seed, category_precision=category_precision,
                                         progress=lambda cases: tqdm(cases, desc="cases", unit="query"))
                    run_id = store_run(backend, run)
                    typer.echo(format_table(run))
                    typer.echo(format_comparison(run))
                    paths = plot_run(run, plot / plot_name(backend, run))
                    typer.echo(f"stored as eval run {run_id}; figure: {', '.join(map(str, paths))}")
            finally:
                for used in chats:
                    report_llm(backend, "eval", used)
    except USER_ERRORS as exc:
        fail(exc)
