"""Models: train, a (k, n) grid, export and import, list, match two models' features."""

from __future__ import annotations

from pathlib import Path

import typer

from saedb.backends import connect
from saedb.cli.common import USER_ERRORS, DbOption, app, fail
from saedb.cli.config_options import config_options
from saedb.lineage import match_models
from saedb.models import drop_model, publish_model, resolve_model
from saedb.trainer.config import TrainConfig


@app.command()
@config_options(TrainConfig, on_error=fail)
def train(
    cfg: TrainConfig,
    db: str = DbOption,
    name: str = typer.Option("sae", help="Model name; each run publishes its next version."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes (torch.distributed: gloo on CPU, NCCL on GPU)."),
) -> None:
    """Train a top-k SAE on the database's embeddings and write weights + codes back. Under
    torchrun (WORLD_SIZE > 1) each process is one rank of a data-parallel run."""
    from saedb.trainer.parallel import init_process_group, torchrun_rank
    from saedb.trainer.train import pick_device, train_from_url, train_in_processes

    try:
        if nproc > 1:
            model_id, m = train_in_processes(db, cfg, name, nproc, log=typer.echo)
        elif (ranked := torchrun_rank()) is not None:
            parallel = init_process_group(*ranked, pick_device(cfg.device))
            published, result = train_from_url(db, cfg, name, log=typer.echo if ranked[0] == 0 else None, parallel=parallel)
            if published is None:
                return
            model_id, m = published, result.metrics
        else:
            model_id, result = train_from_url(db, cfg, name, log=typer.echo)
            m = result.metrics
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(
        f"published model {model_id}: {m['steps']} steps, normalised MSE {m['normalised_mse']:.4f} "
        f"(held out: {m.get('holdout_normalised_mse', float('nan')):.4f}), dead {m['dead_fraction']:.1%}, "
        f"encoder-decoder cosine {m['enc_dec_cosine']:.3f}, {m['seconds']:.0f}s on {m['device']}"
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@app.command()
@config_options(TrainConfig, skip=("k", "n_latents"), on_error=fail)
def grid(
    cfg: TrainConfig,
    db: str = DbOption,
    k: str = typer.Option("16,32", help="Comma-separated k values."),
    n: str = typer.Option("256,512,1024,2048", help="Comma-separated latent counts."),
    name: str = typer.Option("default", help="Grid name in the scaling_runs table."),
    out: Path = typer.Option(Path("scaling"), help="Folder for scaling.png and scaling.svg."),
) -> None:
    """Train a (k, n) grid, store metrics, fit L ∝ n^α per k and plot it (paper Figure 2)."""
    from saedb.trainer.scaling import fit_power_laws, plot_scaling, run_grid

    try:
        with connect(db, create=False) as backend:
            runs = run_grid(backend, _int_list(k), _int_list(n), cfg, grid=name, log=typer.echo)
    except USER_ERRORS as exc:
        fail(exc)
    fits = fit_power_laws(runs)
    for fit in fits:
        typer.echo(f"k={fit.k}: normalised MSE ≈ {fit.coefficient:.3g} · n^{fit.alpha:.3f}")
    for path in plot_scaling(runs, fits, out):
        typer.echo(f"wrote {path}")


@app.command("export")
def export_model(
    model: str = typer.Argument(..., help="Model id or name (latest version)."),
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("sparsify", "--format", help="sparsify or saelens."),
    db: str = DbOption,
) -> None:
    """Export a published model in sparsify or SAELens format."""
    from saedb.interchange import export_sae

    try:
        with connect(db, read_only=True) as backend:
            typer.echo(f"wrote {export_sae(backend.load_sae(resolve_model(backend, model)), out, fmt)}")  # type: ignore[arg-type]
    except USER_ERRORS as exc:
        fail(exc)


@app.command("import")
def import_model(
    directory: Path = typer.Argument(..., help="A sparsify or SAELens SAE folder."),
    name: str = typer.Option(..., help="Model name to publish it under."),
    db: str = DbOption,
) -> None:
    """Import an SAE and publish it (weights + codes of every document) as a new version."""
    from saedb.interchange import import_sae

    try:
        with connect(db, create=False) as backend:
            typer.echo(f"published model {publish_model(backend, import_sae(directory), name)}")
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def drop(model: str = typer.Argument(..., help="Model id or name (latest version)."), db: str = DbOption) -> None:
    """Remove a model version and everything that belongs to it (its untrained control too), in one transaction."""
    try:
        with connect(db, create=False) as backend:
            dropped = drop_model(backend, model)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"dropped model {', '.join(map(str, dropped))} and everything that belongs to it")


@app.command()
def models(db: str = DbOption) -> None:
    """List model versions with their training figures."""
    columns = ("model_id", "name", "version", "n_latents", "k", "status", "steps", "normalised_mse", "dead_fraction",
               "enc_dec_cosine", "created_at")
    try:
        with connect(db, read_only=True) as backend:
            typer.echo("\t".join(columns))
            for row in backend.query(f"SELECT {', '.join(columns)} FROM sae_models ORDER BY model_id"):
                typer.echo("\t".join("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def match(
    model_a: str = typer.Argument(..., help="Model id or name (a name: its latest version)."),
    model_b: str = typer.Argument(..., help="The other model."),
    db: str = DbOption,
) -> None:
    """Match the features of two models by decoder cosine, both ways (the feature_lineage and
    model_matches views): mean max-cosine, mutual matches, splits, orphans, carried labels."""
    try:
        with connect(db, create=False) as backend:
            a, b = resolve_model(backend, model_a), resolve_model(backend, model_b)
            summary = match_models(backend, a, b)
            splits = backend.query(
                "SELECT model_id, feature_id, matched_by, label FROM feature_lineage WHERE other_model_id IN (?, ?) "
                "AND model_id IN (?, ?) AND matched_by >= 2 ORDER BY matched_by DESC, model_id, feature_id LIMIT 5", (a, b, a, b))
    except USER_ERRORS as exc:
        fail(exc)
    for row in summary:
        typer.echo(f"model {row['model_id']} -> {row['other_model_id']}: {row['n_features']} features, mean max cosine "
                   f"{row['mean_max_cosine']:.3f} (median {row['median_max_cosine']:.3f}), {row['mutual']} mutual, "
                   f"{row['split_features']} split (largest into {row['largest_split']}), {row['orphans']} orphans (cosine < 0.5), "
                   f"{row['carried_labels']} labels carried")
    for model_id, feature_id, matched_by, label in splits:
        typer.echo(f"  model {model_id} feature {feature_id} ({label or 'no label'}) is the best match of {matched_by} features")
