"""Data in: load papers, attach a table of your own, encode documents, index embeddings, upgrade a database."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from saedb.attach import Attachment, attach_table, describe_skipped, detach, missing_index_hint
from saedb.backends import connect, mask_dsn
from saedb.backends.duckdb import DuckDBBackend
from saedb.cli.common import USER_ERRORS, DbOption, app, fail
from saedb.embedders import DEFAULT_EMBEDDER
from saedb.encode import encode_new_documents
from saedb.errors import InvalidInputError, OlderSchemaError
from saedb.models import ready_models, resolve_model


@app.command()
def load(
    path: Path = typer.Argument(..., help="JSONL(.gz), CSV or Parquet file of papers."),
    db: str = DbOption,
    embedder: Optional[str] = typer.Option(
        None, help="wordllama-256 (default), minilm or openai:<model>; with --embeddings, the embedder that made them."),
    embeddings: Optional[Path] = typer.Option(
        None, help="Parquet/Arrow file of precomputed vectors: an 'id' column matching the papers and one vector column."),
    limit: Optional[int] = typer.Option(None, help="Load only the first N valid papers."),
    batch_size: int = typer.Option(1024, help="Papers embedded and committed per batch."),
) -> None:
    """Embed (or take precomputed embeddings for) and load papers (idempotent, resumable)."""
    from saedb.loaders import load_corpus

    try:
        if embeddings is not None and embedder is None:
            raise InvalidInputError(
                f"name the embedder that made {embeddings.name} with --embedder (e.g. minilm), so queries are embedded the same way")
        with connect(db) as backend:
            report = load_corpus(backend, path, embedder or DEFAULT_EMBEDDER, embeddings=embeddings, limit=limit, batch_size=batch_size)
            typer.echo(report.summary())
        if report.unread is not None:  # a script must notice that the rest of the file was not loaded
            raise InvalidInputError(f"{path.name} could not be read to its end (line {report.unread.line}); the rows before "
                                    "it were loaded: replace the file and load it again (the load resumes where it stopped)")
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def attach(
    table: str = typer.Argument(..., help="Your table or view (schema.table allowed)."),
    key: str = typer.Option(..., help="Its unique key column."),
    vector: str = typer.Option(..., help="Its vector column (Postgres vector(d), DuckDB FLOAT[d])."),
    schema: str = typer.Option(..., help="The saedb workspace schema to create next to it."),
    title: Optional[str] = typer.Option(None, help="A title column (for labels and results)."),
    text: Optional[str] = typer.Option(None, help="A text column (for labels)."),
    year: Optional[str] = typer.Option(None, help="A year column (for trends)."),
    embedder: Optional[str] = typer.Option(None, help="The embedder that made the vectors (minilm, ...), so queries match."),
    db: str = DbOption,
) -> None:
    """Work on an existing table without copying it: then use --db 'URL?schema=SCHEMA' with any command."""
    try:
        attachment = Attachment(table, key, vector, title, text, year)
        with attach_table(db, schema, attachment, embedder) as backend:
            count, hint = backend.count("doc_keys"), missing_index_hint(backend, attachment)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"attached {table}: {count} rows; use --db '{mask_dsn(db)}{'&' if '?' in db else '?'}schema={schema}'")
    if hint:
        typer.echo(hint, err=True)


@app.command(name="detach")
def detach_command(
    schema: str = typer.Argument(..., help="The workspace schema that saedb attach made."),
    db: str = DbOption,
) -> None:
    """Remove an attached table's workspace and everything in it (models, codes, labels; on Postgres its triggers on
    the table), in one transaction; the table itself is left as it was."""
    try:
        detach(db, schema)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"removed the workspace {schema} and everything in it; the attached table is as it was")


@app.command()
def encode(
    model: Optional[str] = typer.Argument(None, help="Model id or name (latest version); every published model if left out."),
    db: str = DbOption,
    batch_size: int = typer.Option(4096, help="Documents encoded and committed per batch."),
) -> None:
    """Bring codes up to the table: remove those of documents removed or rewritten since they were
    encoded, encode the documents without codes (new and rewritten rows; resumable, idempotent)."""
    from tqdm import tqdm

    try:
        with connect(db, create=False) as backend:
            models = [resolve_model(backend, model)] if model is not None else ready_models(backend)
            if not models:
                raise InvalidInputError("no published model to encode for: `saedb train` publishes one")
            for model_id in models:
                with tqdm(desc=f"encoding for model {model_id}", unit="doc") as bar:
                    report = encode_new_documents(backend, model_id, batch_size, progress=bar.update)
                if report.skipped:
                    typer.echo(describe_skipped(report.skipped), err=True)
                typer.echo(f"model {model_id}: " + (
                    f"removed the codes of {report.forgotten} documents removed or rewritten since they were encoded; "
                    if report.forgotten else "") + f"encoded {report.encoded} documents" + (
                    f"; {report.without_features} have no active feature" if report.without_features else ""))
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def upgrade(db: str = DbOption) -> None:
    """Bring a database an older saedb made to this version's schema and SQL functions, which
    read-only commands, saedb serve and dashboards need (it writes: a DuckDB file must be open nowhere else)."""
    try:
        try:
            with connect(db, read_only=True):
                typer.echo(f"{mask_dsn(db)} is already at this saedb version's schema")
                return
        except OlderSchemaError:
            pass
        with connect(db, create=False):  # a writable connection applies the schema (Backend.migrate)
            typer.echo(f"{mask_dsn(db)} upgraded to this saedb version's schema")
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def index(db: str = DbOption) -> None:
    """Build the approximate search index (HNSW) of a DuckDB file's embeddings, beside the file;
    searches use it from then on (loads build it from APPROXIMATE_FROM documents)."""
    try:
        with connect(db, create=False) as backend:
            if not isinstance(backend, DuckDBBackend):
                raise InvalidInputError("saedb index is for DuckDB files: Postgres keeps its HNSW index in the database")
            started = time.perf_counter()
            backend.build_approximate_index()
            graph = backend.indexes.approximate
            typer.echo(f"indexed {graph.stamp[0] if graph.stamp else 0} embeddings in {time.perf_counter() - started:.1f} s"
                       + (f" ({graph.meta_path})" if graph.meta_path else ""))
    except USER_ERRORS as exc:
        fail(exc)
