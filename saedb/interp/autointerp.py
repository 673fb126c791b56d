"""Run the interpreter + predictor protocol over a model's features and store the results.

For each feature: the interpreter names it from its examples; the predictor scores 3
held-out activating and 3 held-out non-activating abstracts from the label alone (from the
trainer's held-out documents when the model has them, ``saedb.interp.examples``). Pearson
(NULL when the predictions are constant: the paper's NaN, left out of means) and F1 of those
scores, the feature's density and the label's round trip (``saedb.interp.roundtrip``) go to
``feature_labels``, a few features at a time, each time with ``clean`` recomputed for the
model's labels in the same transaction. Features
already labelled by the same labeller are skipped, so a run resumes. A predictor that gives
the run's first ``CONSTANT_AFTER`` or more abstracts one and the same score (a small model
answering "PREDICTION: 0.9" to everything) is no predictor: the run stops with
``ConstantPredictorError`` and stores none of its labels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from saedb.backends import Backend
from saedb.errors import InvalidInputError, require_at_least_one
from saedb.llm import ProtocolError
from saedb.iterate import chunked
from saedb.interp.control import control_failed
from saedb.interp.examples import FeatureExamples, examples_for
from saedb.interp.labellers import Labeller
from saedb.interp.roundtrip import RoundTrip
from saedb.interp.scoring import f1_score, passes_filter, pearson, sanitise_label
from saedb.interp.text import CorpusStats

if TYPE_CHECKING:
    from tqdm import tqdm

BACKGROUND_SAMPLE = 50_000  # documents whose phrase frequencies stand for the corpus
CONSTANT_AFTER = 12  # predictions of a run after which one value for all of them is no predictor


class ConstantPredictorError(ProtocolError):
    """The predictor gave every abstract of the run the same score: its scores measure nothing."""


@dataclass(frozen=True)
class LabelResult:
    feature_id: int
    label: str
    pearson: float | None
    f1: float
    density: float
    predictions: tuple[float, ...] = ()
    held_out_split: bool = False


def corpus_stats(backend: Backend, sample: int = BACKGROUND_SAMPLE) -> CorpusStats:
    """Phrase document frequencies over the corpus (a fixed pseudo-random sample when larger)."""
    rows = backend.query(
        "SELECT title, abstract FROM papers ORDER BY (doc_id * 2654435761) % 1000003, doc_id LIMIT ?", (sample,)
    )
    return CorpusStats.build(f"{t}. {a}" for t, a in rows)


def interpret(labeller: Labeller, examples: FeatureExamples) -> LabelResult | InvalidInputError:
    """The feature's label and scores, or the error of an interpreter that never answered in
    the expected form (that feature stays unlabelled; the run goes on)."""
    try:
        label = labeller.label(examples)
    except InvalidInputError as exc:
        return InvalidInputError(f"feature {examples.feature_id}: {exc}")
    texts, truth = examples.held_out()
    scores = labeller.predict(label, texts)
    return LabelResult(examples.feature_id, label, pearson(scores, truth), f1_score(scores, truth), examples.density,
                       tuple(scores), examples.held_out_split)


def features_by_density(backend: Backend, model_id: int) -> list[int]:
    return [r[0] for r in backend.query(
        "SELECT feature_id FROM sae_codes WHERE model_id = ? GROUP BY feature_id ORDER BY count(*) DESC, feature_id", (model_id,)
    )]


def run_autointerp(
    backend: Backend,
    model_id: int,
    labeller: Labeller,
    features: Iterable[int] | None = None,
    limit: int | None = None,
    concurrency: int = 8,
    log: Callable[[str], None] | None = None,
    progress: "tqdm | None" = None,
    roundtrip: RoundTrip | None = None,
) -> list[LabelResult]:
    """Label features (densest first, or the given ones) that this labeller has not labelled yet;
    ``progress`` (a tqdm bar) learns the total first and advances per feature. Each label's
    round trip is measured with ``roundtrip`` (None: not measured, the columns stay NULL)."""
    require_at_least_one(limit=limit)
    info = backend.model_row(model_id)
    done = {r[0] for r in backend.query("SELECT feature_id FROM feature_labels WHERE model_id = ? AND labeller = ?", (model_id, labeller.name))}
    candidates = features_by_density(backend, model_id) if features is None else list(features)
    todo = [f for f in candidates if f not in done][:limit]
    if progress is not None:
        progress.reset(total=len(todo))
    results: list[LabelResult] = []
    predicted: set[float] = set()
    n_predicted = 0
    failures: list[str] = []
    workers = max(1, concurrency)
    save_responses = getattr(labeller, "flush_responses", lambda: None)  # an LLM labeller's new replies
    with ThreadPoolExecutor(max_workers=workers) as pool, _cancelled_on_error(pool):
        # Executor.map consumes its whole input first: feed it a few features at a time so that
        # results (and the progress bar) arrive from the start. Each chunk's labels are stored
        # with the clean flags recomputed in one transaction: after an interruption at any point
        # the stored labels have consistent flags (families and the evaluation can use them).
        for chunk in chunked(examples_for(backend, model_id, todo, info["n_documents"]), 2 * workers):
            labelled = []
            for result in pool.map(lambda e: interpret(labeller, e), chunk):
                if progress is not None:
                    progress.update()
                if isinstance(result, InvalidInputError):
                    failures.append(str(result))
                    if log:
                        log(f"not labelled: {result}")
                    continue
                labelled.append(result)
                predicted.update(result.predictions)
                n_predicted += len(result.predictions)
                if log:
                    log(f"feature {result.feature_id:>5}  r={result.pearson if result.pearson is not None else float('nan'):+.2f}  "
                        f"F1={result.f1:.2f}  {result.label}")
            if n_predicted >= CONSTANT_AFTER and len(predicted) == 1:
                stored = ", ".join(str(r.feature_id) for r in results) or "NULL"  # integers of our own
                backend.execute(f"DELETE FROM feature_labels WHERE model_id = ? AND labeller = ? AND feature_id IN ({stored})",
                                (model_id, labeller.name))
                raise ConstantPredictorError(
                    f"the predictor of {labeller.name} scored all {n_predicted} abstracts {predicted.pop():+.2f}: it is not a "
                    "predictor, so its scores measure nothing; none of this run's labels were stored")
            trips = roundtrip.trips([r.label for r in labelled], [r.feature_id for r in labelled]) if roundtrip else []
            with backend.transaction():
                for result, trip in zip_longest(labelled, trips):
                    backend.execute(
                        "INSERT INTO feature_labels (model_id, feature_id, labeller, label, pearson, f1, density, held_out, "
                        "roundtrip_rank, decoder_cosine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (model_id, result.feature_id, labeller.name, result.label, result.pearson, result.f1, result.density,
                         result.held_out_split, trip and trip.rank, trip and trip.cosine),
                    )
                mark_clean(backend, model_id, labeller.name)
                save_responses()
            results.extend(labelled)
    if failures and log:
        log(f"{len(failures)} features could not be labelled (run again to retry them)")
    return results


@contextmanager
def _cancelled_on_error(pool: ThreadPoolExecutor) -> Iterator[None]:
    """A run that stops (an endpoint gone, a model that ignores the protocol) does not wait for
    the features still queued."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def mark_clean(backend: Backend, model_id: int, labeller: str) -> int:
    """Set ``clean`` on a model's labels by one labeller: the paper's filter, and, where the
    round trip was measured, the label must switch its own feature on (``roundtrip_rank`` not
    NULL). Of features whose sanitised labels coincide, only the one with the highest f1 +
    pearson stays clean. None is clean when the labeller failed its control. Returns the
    number of clean features."""
    rows = [] if control_failed(backend, model_id, labeller) else backend.query(
        "SELECT feature_id, label, pearson, f1, density, roundtrip_rank, decoder_cosine FROM feature_labels "
        "WHERE model_id = ? AND labeller = ?", (model_id, labeller)
    )
    best: dict[str, tuple[float, int]] = {}
    for feature, label, r, f1, density, rank, cosine in rows:
        round_trips = cosine is None or rank is not None
        if round_trips and passes_filter(sanitise_label(label), r, f1, density):
            key = sanitise_label(label).lower()
            best[key] = max(best.get(key, (float("-inf"), -1)), (f1 + r, -feature))
    clean = sorted(-feature for _, feature in best.values())
    members = ", ".join(map(str, clean)) or "NULL"  # integers of our own, not user input
    backend.execute(f"UPDATE feature_labels SET clean = (feature_id IN ({members})) WHERE model_id = ? AND labeller = ?",
                    (model_id, labeller))
    return len(clean)
