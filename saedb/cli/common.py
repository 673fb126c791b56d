"""What every area of the command line shares: the app, the --db and LLM options, the error
exit, the LLM helpers and the stop signal of the commands that run a server."""

from __future__ import annotations

import typer

import saedb

from saedb.backends import DATABASE_ERRORS, DEFAULT_DB, user_message
from saedb.errors import SaedbError
from saedb.interp import LLMLabeller, OfflineLabeller, corpus_stats
from saedb.llm import ChatModel, ResponseCache, endpoint_settings, record_run

app = typer.Typer(help="Sparse-autoencoder features for text embeddings, inside DuckDB or Postgres.", no_args_is_help=True)
DbOption = typer.Option(DEFAULT_DB, "--db", help="DuckDB file path or postgresql:// DSN.", envvar="SAEDB_DB")

USER_ERRORS = (SaedbError, *DATABASE_ERRORS)


def print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"saedb {saedb.__version__}")
        raise typer.Exit()


@app.callback()
def options(_: bool = typer.Option(False, "--version", callback=print_version, is_eager=True, help="Print saedb's version and exit.")) -> None:
    pass


def fail(exc: Exception) -> None:
    """Print a user error in one line and exit 2 (no traceback)."""
    typer.secho(f"error: {user_message(exc)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


ProtocolOption = typer.Option("auto", help="LLM protocol: chat, completion (few-shot, for base models) or auto "
                                           "(completion where an llama.cpp server has no chat template).")
MaxTokensOption = typer.Option(None, help="Most tokens per LLM reply (default: 256 for a local llama.cpp server, else 1,024).")
TimeoutOption = typer.Option(None, help="Seconds per LLM request (default: 600 local, 120 otherwise).")
ConcurrencyOption = typer.Option(None, help="LLM requests at once (default: the local server's slots, else 8).")


def chat_model(backend, llm: str, protocol: str, max_tokens: int | None, timeout: float | None, concurrency: int | None):
    """(ChatModel with the database's response cache, requests at once) for the model at OPENAI_BASE_URL."""
    settings = endpoint_settings(None, protocol, concurrency, max_tokens, timeout)
    chat = ChatModel(llm, timeout_s=settings.timeout_s, max_tokens=settings.max_tokens, protocol=settings.protocol,
                     cache=ResponseCache(backend, llm))
    return chat, settings.concurrency


def labeller_for(backend, chat, family: bool = False, roundtrip=None):
    """The LLM labeller when a chat model is given, else the offline one (choosing among its
    candidate labels by ``roundtrip`` when given)."""
    if chat is not None:
        return LLMLabeller(chat, family=family)
    return OfflineLabeller(corpus_stats(backend), roundtrip=roundtrip)


def report_llm(backend, task: str, chat) -> None:
    """Record an LLM run's request counts in the database and print them (nothing offline)."""
    if chat is not None:
        record_run(backend, task, chat)
        typer.echo(chat.counts.summary())


def label_of(row: dict) -> str:
    """A feature's label, or "(no label)"."""
    return row["label"] or "(no label)"


def echo_table(header: str, lines: list[str]) -> None:
    typer.echo(header)
    for line in lines:
        typer.echo(line)


def stop_requested():
    """An event set by SIGTERM, SIGINT or SIGHUP, for the commands that run a server until
    stopped (SIGINT too: a shell starts `saedb postgres &` with SIGINT ignored)."""
    import signal
    import threading

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())
    return stopping
