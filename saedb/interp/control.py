"""The control for label scores: does a feature's own label predict its held-out examples
better than another feature's label does?

Each labelled feature's held-out abstracts are scored twice by the same predictor: with its
own label and with the label of another labelled feature (a random derangement). A score
that only measured the predictor or the examples would come out the same both ways.
Pearson is undefined (NaN) when a label's predictions are all equal; the report gives the
share of such cases and means both over the defined cases and with NaN counted as 0.

What it does not show: that the SAE learned anything. Any direction of a sentence-embedding
space has top documents that share words, so an untrained SAE's labels beat shuffled ones too.
A labeller whose margin is <= 0 has failed: the verdict is stored, after which
its labels are never clean and ``feature_best_labels`` does not offer them (no steering by
label, no families from them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from saedb.backends import Backend
from saedb.errors import InvalidInputError
from saedb.interp.examples import examples_for
from saedb.interp.labellers import Predictor
from saedb.interp.scoring import f1_score, pearson


@dataclass(frozen=True)
class Scores:
    pearson: list[float | None]
    f1: list[float]

    def pearson_as_zero(self) -> float:
        return float(np.mean([0.0 if r is None else r for r in self.pearson]))

    def pearson_defined(self) -> float:
        defined = [r for r in self.pearson if r is not None]
        return float(np.mean(defined)) if defined else float("nan")

    def nan_share(self) -> float:
        return sum(r is None for r in self.pearson) / len(self.pearson)

    def mean_f1(self) -> float:
        return float(np.mean(self.f1))


@dataclass(frozen=True)
class ControlReport:
    labeller: str
    features: int
    own: Scores
    shuffled: Scores

    def pearson_margin(self) -> float:
        return self.own.pearson_as_zero() - self.shuffled.pearson_as_zero()

    def f1_margin(self) -> float:
        return self.own.mean_f1() - self.shuffled.mean_f1()

    def passed(self) -> bool:
        return self.pearson_margin() > 0

    def lines(self) -> list[str]:
        row = "{:<16} {:>14.3f} {:>16.3f} {:>9.1%} {:>8.3f}"
        return [
            f"control: {self.features} features labelled by {self.labeller}, each scored with its own and with a shuffled label",
            f"{'label':<16} {'Pearson (NaN=0)':>14} {'Pearson (defined)':>16} {'NaN':>9} {'F1':>8}",
            row.format("own", self.own.pearson_as_zero(), self.own.pearson_defined(), self.own.nan_share(), self.own.mean_f1()),
            row.format("shuffled", self.shuffled.pearson_as_zero(), self.shuffled.pearson_defined(), self.shuffled.nan_share(),
                       self.shuffled.mean_f1()),
            f"margin: Pearson {self.pearson_margin():+.3f}, F1 {self.f1_margin():+.3f}",
            "(a margin over shuffled labels does not show that the SAE learned anything: an untrained SAE's labels have one too)"
            if self.passed() else
            f"this labeller's labels are not better than shuffled ones: the labels of {self.labeller} are kept but "
            "not offered for steering or families",
        ]


def label_control(backend: Backend, model_id: int, labeller: str, predictor: Predictor, seed: int = 0,
                  limit: int | None = None, record: bool = True) -> ControlReport:
    """Own-label against shuffled-label scores for the features ``labeller`` has labelled, with
    the verdict stored (``record_control``) when the control ran over all of them with the
    labeller's own predictor (``record``: False when another predictor judges its labels)."""
    labels = dict(backend.query(
        "SELECT feature_id, label FROM feature_labels WHERE model_id = ? AND labeller = ? ORDER BY feature_id", (model_id, labeller)
    ))
    features = sorted(labels)
    rng = random.Random(seed)
    rng.shuffle(features)
    features = features[:limit]
    if len(features) < 2:
        raise InvalidInputError(f"the control needs at least 2 features labelled by {labeller}; run `saedb interp` first")
    donor = {f: features[(i + 1) % len(features)] for i, f in enumerate(features)}  # a cycle: nobody keeps their own
    n_documents = backend.model_row(model_id)["n_documents"]
    own, shuffled = Scores([], []), Scores([], [])
    for examples in examples_for(backend, model_id, features, n_documents):
        texts, truth = examples.held_out()
        for scores, label in ((own, labels[examples.feature_id]), (shuffled, labels[donor[examples.feature_id]])):
            predictions = predictor.predict(label, texts)
            scores.pearson.append(pearson(predictions, truth))
            scores.f1.append(f1_score(predictions, truth))
    report = ControlReport(labeller=labeller, features=len(own.f1), own=own, shuffled=shuffled)
    if record and (limit is None or limit >= len(labels)):
        record_control(backend, model_id, report)
    return report


def record_control(backend: Backend, model_id: int, report: ControlReport) -> None:
    """Store the control's margins for (model, labeller); a failed control unsets ``clean``."""
    with backend.transaction():
        backend.execute(
            "INSERT INTO label_controls (model_id, labeller, features, pearson_margin, f1_margin) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (model_id, labeller) DO UPDATE SET features = excluded.features, "
            "pearson_margin = excluded.pearson_margin, f1_margin = excluded.f1_margin, checked_at = now()",
            (model_id, report.labeller, report.features, report.pearson_margin(), report.f1_margin()))
        if not report.passed():
            backend.execute("UPDATE feature_labels SET clean = FALSE WHERE model_id = ? AND labeller = ?",
                            (model_id, report.labeller))


def control_failed(backend: Backend, model_id: int, labeller: str) -> bool:
    """Whether the labeller's latest control on the model found its labels no better than shuffled ones."""
    return bool(backend.query("SELECT count(*) FROM label_controls WHERE model_id = ? AND labeller = ? AND pearson_margin <= 0",
                              (model_id, labeller))[0][0])
