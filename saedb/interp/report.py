"""What a model's labels show, beside the same figures for its untrained control.

The headline is the margin of the trained model over an untrained SAE of the same shape,
labelled and scored the same way (``saedb.trainer.train.publish_untrained``): any direction of
a sentence-embedding space has top documents that share words, so labels of an untrained
SAE score well above shuffled labels too. Only what training adds over that is the SAE's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from saedb.backends import Backend


@dataclass(frozen=True)
class LabelFigures:
    labels: int
    held_out_share: float  # share of labels scored on the trainer's held-out documents
    pearson: float  # mean over defined values (NaN left out, as in the paper)
    pearson_nan: float  # share of labels whose predictions were constant
    f1: float
    hit_at_1: float  # round trip: the feature is the label's strongest
    hit_at_5: float
    hit_at_k: float  # the feature is among the label's active features
    decoder_cosine: float
    clean: int
    families: int

    @classmethod
    def of(cls, backend: Backend, model_id: int, labeller: str) -> "LabelFigures":
        rows = backend.query(
            "SELECT pearson, f1, coalesce(clean, FALSE), coalesce(held_out, FALSE), roundtrip_rank, decoder_cosine "
            "FROM feature_labels WHERE model_id = ? AND labeller = ?", (model_id, labeller))
        families = int(backend.query("SELECT count(*) FROM feature_families WHERE model_id = ?", (model_id,))[0][0])
        if not rows:
            return cls(0, *([math.nan] * 9), 0, families)  # type: ignore[arg-type]
        pearson, f1, clean, held, rank, cosine = zip(*rows)
        defined = [r for r in pearson if r is not None]
        measured = [(k, c) for k, c in zip(rank, cosine) if c is not None]

        def hits(top: float) -> float:
            return float(np.mean([k is not None and k <= top for k, _ in measured])) if measured else math.nan

        return cls(
            labels=len(rows), held_out_share=float(np.mean(held)),
            pearson=float(np.mean(defined)) if defined else math.nan, pearson_nan=1 - len(defined) / len(rows),
            f1=float(np.mean(f1)), hit_at_1=hits(1), hit_at_5=hits(5), hit_at_k=hits(math.inf),
            decoder_cosine=float(np.mean([c for _, c in measured])) if measured else math.nan,
            clean=sum(map(bool, clean)), families=families,
        )


# (field, row name, higher is better) in the order printed; margins are trained minus untrained.
ROWS = (
    ("labels", "labels", None),
    ("pearson", "Pearson, held out", True),
    ("pearson_nan", "Pearson NaN share", False),
    ("f1", "F1, held out", True),
    ("hit_at_1", "round trip hit@1", True),
    ("hit_at_5", "round trip hit@5", True),
    ("hit_at_k", "round trip hit@k", True),
    ("decoder_cosine", "label . decoder cosine", True),
    ("clean", "clean features", True),
    ("families", "families", True),
)
assert {f.name for f in fields(LabelFigures)} - {"held_out_share"} == {name for name, _, _ in ROWS}


def _cell(value: float) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def losses(trained: LabelFigures, untrained: LabelFigures) -> list[str]:
    """The rows on which the trained model does not beat its untrained control."""
    lost = []
    for name, title, higher in ROWS:
        a, b = getattr(trained, name), getattr(untrained, name)
        if higher is None or math.isnan(a) or math.isnan(b):
            continue
        if (a <= b) if higher else (a >= b):
            lost.append(title)
    return lost


def comparison_lines(labeller: str, trained: LabelFigures, untrained: LabelFigures | None) -> list[str]:
    """A table of trained vs untrained figures with the margin, then the verdict."""
    lines = [f"labels by {labeller}: the trained model beside an untrained SAE of the same shape (its control)",
             f"{'':<24} {'trained':>10} {'untrained':>10} {'margin':>10}"]
    for name, title, _ in ROWS:
        a = getattr(trained, name)
        b = getattr(untrained, name) if untrained else math.nan
        margin = a - b if untrained is not None else math.nan
        lines.append(f"{title:<24} {_cell(a):>10} {_cell(b) if untrained else 'n/a':>10} "
                     f"{'n/a' if math.isnan(margin) else (f'{margin:+,}' if isinstance(margin, int) else f'{margin:+.3f}'):>10}")
    if trained.labels and trained.held_out_share < 1:
        lines.append(f"{1 - trained.held_out_share:.0%} of the labels were scored on activation ranks 6-8, not on held-out "
                     "documents (the model has no held-out split)")
    if math.isnan(trained.hit_at_k):
        lines.append("round trip not measured: the database's embedder does not run here")
    if untrained is None:
        lines.append("no untrained control was labelled (saedb interp --control-model)")
    else:
        lost = losses(trained, untrained)
        lines.append("the trained model beats its untrained control on every figure" if not lost else
                     f"the trained model does NOT beat its untrained control on: {', '.join(lost)}")
    return lines
