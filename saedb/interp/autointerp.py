"""Run the interpreter + predictor protocol over a model's features and store the results.

For each feature: the interpreter sees the 5 top-activating and 5 random non-activating
abstracts and names the feature; the predictor scores 3 held-out activating and 3
held-out non-activating abstracts from the label alone. Pearson correlation and F1 of those
scores against the truth, and the feature's density, go to ``feature_labels``.
Features already labelled by the same labeller are skipped, so a run resumes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from saedb.backends import Backend
from saedb.interp.examples import FeatureExamples, feature_examples
from saedb.interp.labellers import Labeller


@dataclass(frozen=True)
class LabelResult:
    feature_id: int
    label: str
    pearson: float | None
    f1: float
    density: float


def pearson(scores: list[float], truth: list[int]) -> float | None:
    """Correlation of scores with truth; None when the scores are constant."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if s.std() == 0 or t.std() == 0:
        return None
    return float(np.corrcoef(s, t)[0, 1])


def f1_score(scores: list[float], truth: list[int]) -> float:
    predicted = [s > 0 for s in scores]
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    fn = sum(t and not p for p, t in zip(predicted, truth))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def interpret(labeller: Labeller, examples: FeatureExamples) -> LabelResult:
    label = labeller.label(examples.positives, examples.negatives)
    texts, truth = examples.held_out()
    scores = labeller.predict(label, texts)
    return LabelResult(examples.feature_id, label, pearson(scores, truth), f1_score(scores, truth), examples.density)


def run_autointerp(
    backend: Backend,
    model_id: int,
    labeller: Labeller,
    features: Iterable[int] | None = None,
    limit: int | None = None,
    concurrency: int = 8,
    log: Callable[[str], None] | None = None,
) -> list[LabelResult]:
    """Label features (densest first, or the given ones) that this labeller has not labelled yet."""
    info = backend.model_row(model_id)
    done = {r[0] for r in backend.query("SELECT feature_id FROM feature_labels WHERE model_id = ? AND labeller = ?", (model_id, labeller.name))}
    if features is None:
        features = [r[0] for r in backend.query(
            "SELECT feature_id FROM sae_codes WHERE model_id = ? GROUP BY feature_id ORDER BY count(*) DESC, feature_id", (model_id,)
        )]
    todo = [f for f in features if f not in done][:limit]
    examples = [e for e in (feature_examples(backend, model_id, f, info["n_documents"]) for f in todo) if e is not None]
    results: list[LabelResult] = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for result in pool.map(lambda e: interpret(labeller, e), examples):
            backend.execute(
                "INSERT INTO feature_labels (model_id, feature_id, labeller, label, pearson, f1, density) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model_id, result.feature_id, labeller.name, result.label, result.pearson, result.f1, result.density),
            )
            results.append(result)
            if log:
                log(f"feature {result.feature_id:>5}  r={result.pearson if result.pearson is not None else float('nan'):+.2f}  "
                    f"F1={result.f1:.2f}  {result.label}")
    return results
