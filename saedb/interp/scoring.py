"""Scores of a label against held-out truth, and the paper's clean-feature filter (§3.3)."""

from __future__ import annotations

import re

import numpy as np

CLEAN_F1, CLEAN_PEARSON, CLEAN_MAX_DENSITY = 0.8, 0.8, 0.2
DOMAIN_SUFFIX = re.compile(
    r"\s+in\s+(astronomy|astrophysics|physics|astronomical|astrophysical|computer science|cs|machine learning|ml|ai)\s*$",
    re.IGNORECASE,
)
VAGUE_LABEL = re.compile(r"['\"][A-Za-z]['\"]|\b(keyword|keywords|topic|topics|concept|concepts|presence)\b", re.IGNORECASE)


def pearson(scores: list[float], truth: list[int]) -> float | None:
    """Correlation of scores with truth; None (stored as NULL, the paper's NaN) when either is constant."""
    s, t = np.asarray(scores, float), np.asarray(truth, float)
    if s.std() == 0 or t.std() == 0:
        return None
    return float(np.corrcoef(s, t)[0, 1])


def f1_score(scores: list[float], truth: list[int]) -> float:
    """F1 of 'score > 0' as the prediction that the feature fires."""
    predicted = [s > 0 for s in scores]
    tp = sum(p and t for p, t in zip(predicted, truth))
    fp = sum(p and not t for p, t in zip(predicted, truth))
    fn = sum(t and not p for p, t in zip(predicted, truth))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def sanitise_label(label: str) -> str:
    """The label without a trailing domain phrase ('... in astrophysics')."""
    return DOMAIN_SUFFIX.sub("", label.strip()).strip()


def passes_filter(label: str, pearson_r: float | None, f1: float, density: float) -> bool:
    """The paper's clean filter: f1 >= 0.8, pearson >= 0.8, density < 0.2, no vague label."""
    return (
        pearson_r is not None and pearson_r >= CLEAN_PEARSON and f1 >= CLEAN_F1 and density < CLEAN_MAX_DENSITY
        and not VAGUE_LABEL.search(label)
    )
