"""Interpretation: label features (beside an untrained control) and build families."""

from __future__ import annotations

from typing import Optional

import typer

from saedb.backends import connect
from saedb.cli.common import (USER_ERRORS, ConcurrencyOption, DbOption, MaxTokensOption, ProtocolOption, TimeoutOption, app,
                              chat_model, fail, labeller_for, report_llm)
from saedb.interp import label_control, run_autointerp
from saedb.interp.report import LabelFigures, comparison_lines
from saedb.interp.roundtrip import RoundTrip
from saedb.models import resolve_model


@app.command()
def interp(
    model: str = typer.Argument(..., help="Model id or name (latest version)."),
    db: str = DbOption,
    limit: Optional[int] = typer.Option(None, help="Label at most N features this run (densest first; default: all); resumes."),
    llm: Optional[str] = typer.Option(None, help="Model of an OpenAI-compatible API (OPENAI_BASE_URL; saedb llm starts one); "
                                                 "default: offline."),
    control: bool = typer.Option(True, help="Also score every label against a shuffled label (the control)."),
    untrained: bool = typer.Option(True, help="Label an untrained SAE of the same shape the same way and print both "
                                              "(the control for anything about features; needs the train extra)."),
    families: bool = typer.Option(True, help="Build families (offline names) of both models for the comparison; "
                                             "`saedb families --llm` names them with an LLM afterwards."),
    protocol: str = ProtocolOption,
    max_tokens: Optional[int] = MaxTokensOption,
    timeout: Optional[float] = TimeoutOption,
    concurrency: Optional[int] = ConcurrencyOption,
) -> None:
    """Label features and score the labels (interpreter + predictor, round trip), beside an untrained control."""
    chat = None
    try:
        with connect(db, create=False) as backend:
            model_id = resolve_model(backend, model)
            chat, workers = chat_model(backend, llm, protocol, max_tokens, timeout, concurrency) if llm else (None, concurrency or 8)
            try:
                name = _label_model(backend, model_id, chat, limit, workers, control, families)
                control_id = _untrained_control(backend, model_id) if untrained else None
                if control_id is not None:
                    typer.echo(f"untrained control: model {control_id}")
                    _label_model(backend, control_id, chat, limit, workers, control, families)
            finally:
                report_llm(backend, "interp", chat)
            trained_figures = LabelFigures.of(backend, model_id, name)
            control_figures = LabelFigures.of(backend, control_id, name) if control_id is not None else None
            for line in comparison_lines(name, trained_figures, control_figures):
                typer.echo(line)
    except USER_ERRORS as exc:
        fail(exc)


def _untrained_control(backend, model_id: int) -> int | None:
    """The model's untrained control (published on first use); None without the trainer."""
    try:
        from saedb.trainer.train import publish_untrained
    except ImportError:
        typer.echo("no untrained control: it needs the trainer (pip install 'saedb[train]')", err=True)
        return None
    return publish_untrained(backend, model_id)


def _label_model(backend, model_id: int, chat, limit: int | None, workers: int, control: bool, families: bool) -> str:
    """Label one model's features, then its shuffled-label control and families; the labeller's name."""
    from saedb.families import build_families, has_labels

    roundtrip = RoundTrip.for_model(backend, model_id)
    labeller = labeller_for(backend, chat, roundtrip=roundtrip)
    bar = tqdm_bar(f"model {model_id}: labelling with {labeller.name}")
    try:
        results = run_autointerp(backend, model_id, labeller, limit=limit, concurrency=workers, progress=bar, roundtrip=roundtrip)
    finally:
        bar.close()  # an error's line goes after the bar, never inside it
    typer.echo(f"labelled {len(results)} new features of model {model_id} with {labeller.name}")
    if control:
        for line in label_control(backend, model_id, labeller.name, labeller).lines():
            typer.echo(line)
    if families and has_labels(backend, model_id):  # a run that labelled nothing has no families to group
        build_families(backend, model_id)
    return labeller.name


def tqdm_bar(description: str):
    from tqdm import tqdm

    return tqdm(desc=description, unit="feature")


@app.command()
def families(
    model: str = typer.Argument(..., help="Model id or name."),
    db: str = DbOption,
    llm: Optional[str] = typer.Option(None, help="Model that names and scores families (OPENAI_BASE_URL; default: offline)."),
    protocol: str = ProtocolOption,
    max_tokens: Optional[int] = MaxTokensOption,
    timeout: Optional[float] = TimeoutOption,
) -> None:
    """Co-occurrence in SQL, then the paper's maximum-spanning-tree families over clean features; names, scores, statistics."""
    from saedb.families import build_families, llm_family_namer, offline_family_name

    try:
        with connect(db, create=False) as backend:
            model_id = resolve_model(backend, model)
            chat = chat_model(backend, llm, protocol, max_tokens, timeout, None)[0] if llm else None
            labeller = labeller_for(backend, chat, family=True)
            namer = llm_family_namer(labeller) if llm else offline_family_name
            try:
                found = build_families(backend, model_id, predictor=labeller, namer=namer)
            finally:
                report_llm(backend, "families", chat)
            _print_family_stats(backend, model_id)
            for family_id, label, size, f1, r in backend.query(
                "SELECT family_id, label, size, f1, pearson FROM feature_families WHERE model_id = ? ORDER BY size DESC LIMIT 15",
                (model_id,),
            ):
                typer.echo(f"family {family_id:>4}  {size - 1:>4} children  F1 {_fmt(f1)}  r {_fmt(r)}  {label}")
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"{len(found)} families for model {model_id}")


def _fmt(value: float | None) -> str:
    return "  nan" if value is None else f"{value:.2f}"


def _print_family_stats(backend, model_id: int) -> None:
    columns = ("n_families", "mean_children", "median_children", "max_children", "share_of_features", "largest_family_share",
               "clean_features", "mean_cooccurrence_ratio", "block_diagonality", "mean_family_f1", "mean_family_pearson",
               "membership_fraction")
    rows = backend.query(f"SELECT {', '.join(columns)} FROM family_stats WHERE model_id = ?", (model_id,))
    for column, value in zip(columns, rows[0] if rows else ()):
        typer.echo(f"{column:<24} {'' if value is None else f'{value:.3f}' if isinstance(value, float) else value}")
