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
