"""The main job, end to end on the embedded default: load a sample of the real astro-ph
corpus (spread over its years) into DuckDB, train a top-k SAE, write it back, label features and find families,
steer a search in SQL toward a concept a slider step at a time (with the share of results carrying
the concept, near the query, and both), and compare steering with query rewriting. Every long
step shows progress."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from saedb.backends import Backend
from saedb.embedders import get_embedder
from saedb.evaluation import get_judge, get_rewriter, run_evaluation, store_run, title_queries
from saedb.evaluation.report import format_comparison
from saedb.families import build_families
from saedb.interp import OfflineLabeller, corpus_stats, label_control, run_autointerp
from saedb.interp.report import LabelFigures, comparison_lines
from saedb.interp.roundtrip import RoundTrip
from saedb.loaders import load_corpus
from saedb.trainer import TrainConfig
from saedb.trainer.train import publish_untrained, train_from_db

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh_astro.jsonl.gz"


def default_corpus() -> Path:
    """The demo's corpus: ../shared/data beside the source tree, else (an installed wheel) beside the working directory."""
    return DEFAULT_CORPUS if DEFAULT_CORPUS.exists() else Path("..", "shared", "data", "hh_astro.jsonl.gz").resolve()

NEAREST_SQL = """
SELECT p.doc_id FROM embeddings e JOIN papers p USING (doc_id)
ORDER BY array_cosine_distance(e.embedding, embed(?)), p.doc_id LIMIT ?
"""

# Steered semantic search in SQL: the query turned a fraction of the way toward a feature.
STEERED_SQL = """
SELECT p.doc_id, p.arxiv_id, p.title, array_cosine_distance(e.embedding, steer_toward(embed(?), ?, ?, ?)) AS distance
FROM embeddings e JOIN papers p USING (doc_id)
ORDER BY distance, p.doc_id LIMIT ?
"""

# How many of the given papers (the query's nearest) carry a feature.
NEAR_CARRIERS_SQL = """
SELECT count(*) FROM sae_codes WHERE model_id = ? AND feature_id = ? AND doc_id IN (SELECT unnest(?::BIGINT[]))
"""

NEIGHBOURHOOD = 50  # "near the query": among its 50 nearest papers
SLIDER_STEPS = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8)


def spread_sample(corpus: Path, limit: int, directory: Path) -> Path:
    """Every n-th line of a JSONL(.gz) corpus, about ``limit`` lines spread over all its years
    (the first lines of hh_astro are 2007 papers with no astro-ph subcategory)."""
    opener = gzip.open if corpus.suffix == ".gz" else open
    with opener(corpus, "rt", encoding="utf-8", errors="surrogateescape") as source:
        total = sum(1 for _ in source)
    step = max(1, total // limit)
    target = directory / f"{corpus.name.split('.')[0]}_every_{step}.jsonl"
    with opener(corpus, "rt", encoding="utf-8", errors="surrogateescape") as source, \
            open(target, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.writelines(line for i, line in enumerate(source) if i % step == 0 and i // step < limit)
    return target


def run_demo(
    backend: Backend,
    corpus: Path = DEFAULT_CORPUS,
    limit: int = 5000,
    query: str = "dark matter halos in cosmological simulations",
    concept: str = "galaxy clusters",
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    embedder = get_embedder()
    if corpus.name.endswith((".jsonl", ".jsonl.gz")):
        with tempfile.TemporaryDirectory() as directory:
            report = load_corpus(backend, spread_sample(corpus, limit, Path(directory)), embedder)
    else:
        report = load_corpus(backend, corpus, embedder, limit=limit)
    log(report.summary())
    # A small budget for a ~1 minute demo; `saedb train` defaults to the paper's 13,300 steps at lr 1e-4.
    cfg = TrainConfig(k=32, n_latents=1024, batch_size=256, lr=1e-3, steps=800)
    log(f"training a top-k SAE (k={cfg.k}, n={cfg.n_latents}, {cfg.steps} steps) and writing its codes back")
    model_id, result = train_from_db(backend, cfg, "astro-demo", log=log)
    m = result.metrics
    log(
        f"model {model_id}: normalised MSE {m['normalised_mse']:.3f}, L0 {m['l0']:.1f}, "
        f"dead {m['dead_fraction']:.1%}, {m['seconds']:.1f}s on {m['device']}"
    )
    stats = corpus_stats(backend)
    control_id = publish_untrained(backend, model_id)
    log(f"the untrained control: model {control_id}, the same SAE before training, labelled and scored the same way")
    for labelled_model in (model_id, control_id):
        roundtrip = RoundTrip.for_model(backend, labelled_model)
        labeller = OfflineLabeller(stats, roundtrip=roundtrip)
        with tqdm(desc=f"labelling model {labelled_model} offline", unit="feature") as bar:
            labelled = run_autointerp(backend, labelled_model, labeller, progress=bar, roundtrip=roundtrip)
        for line in label_control(backend, labelled_model, labeller.name, labeller).lines()[-2:]:
            log(line)
        families = build_families(backend, labelled_model, predictor=labeller)
        log(f"model {labelled_model}: labelled {len(labelled)} features, found {len(families)} feature families")
    for line in comparison_lines(labeller.name, LabelFigures.of(backend, model_id, labeller.name),
                                 LabelFigures.of(backend, control_id, labeller.name)):
        log(line)
    showcase = steering_showcase(backend, model_id, query, concept, log)
    judge = get_judge("categories", backend)
    run = run_evaluation(backend, model_id, embedder, judge, title_queries(backend, 30, seed=0), get_rewriter("offline-rewrite"),
                         "30 corpus titles", grid="small", category_precision=0.4,  # a small SAE predicts categories less sharply
                         progress=lambda cases: tqdm(cases, desc="steering evaluation", unit="query"))
    store_run(backend, run)
    log(f"\nsteering vs an offline rewrite (down topic's words dropped, up topic appended) on 30 title queries, judged by arXiv categories (5-way choice, chance 0.2; "
        f"table eval_results, run {run.run_id}):")
    log(format_comparison(run))
    return {"model_id": model_id, **showcase, "evaluation": run}


def steering_showcase(backend: Backend, model_id: int, query: str, concept: str, log: Callable[[str], None]) -> dict[str, object]:
    """Steer the query toward the concept's feature a slider step at a time and print, at each,
    the share of the top 10 that carries the feature, that is near the query, and that is both."""
    near = [row[0] for row in backend.query(NEAREST_SQL, (query, NEIGHBOURHOOD))]
    feature = backend.query("SELECT sae_feature_by_label(?, ?)", (concept, model_id))[0][0]  # saedb.concepts' rule
    near_carriers = backend.query(NEAR_CARRIERS_SQL, (model_id, feature, near))[0][0]
    label = backend.query("SELECT label FROM feature_summary WHERE model_id = ? AND feature_id = ?", (model_id, feature))[0][0]
    carriers = {row[0] for row in backend.query("SELECT doc_id FROM sae_codes WHERE model_id = ? AND feature_id = ?", (model_id, feature))}
    log(f"\nconcept {concept!r} -> feature {feature} ({label}), which {near_carriers} of the {NEIGHBOURHOOD} papers nearest "
        f"{query!r} carry; steering the query toward it (steer_toward: the fraction of the way from the query to the feature):")
    log("   fraction  carry the feature  near the query  both")
    table, middle = [], []
    for fraction in SLIDER_STEPS:
        rows = backend.query(STEERED_SQL, (query, feature, fraction, model_id, 10))
        hits = [row[0] for row in rows]
        shares = (sum(h in carriers for h in hits) / 10, sum(h in near for h in hits) / 10,
                  sum(h in carriers and h in near for h in hits) / 10)
        table.append((fraction, *shares))
        log(f"   {fraction:8.2f}  {shares[0]:17.0%}  {shares[1]:14.0%}  {shares[2]:4.0%}")
        if fraction == 0.5:
            middle = rows
    log("top 5 halfway (fraction 0.5):")
    for _, arxiv_id, title, distance in middle[:5]:
        log(f"   {distance:.3f}  {arxiv_id}  {title}")
    return {"feature": feature, "steering_table": table, "halfway": middle}
