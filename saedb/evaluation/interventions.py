"""The paper's two interventions on a query embedding (paper-notes §5.2) and the control.

- ``add``: q' = q + a_up·dir(up) + a_down·dir(down), dir = a feature's decoder row (the SQL
  ``steer``/``steer_many``) or the unit sum of a family's rows (``steer_family``); the SAE's
  error term is kept.
- ``clamp``: encode q, set the down topic's latents to 0 and the up topic's to a_up, keep the
  top k, decode: a reconstruction without the error term.
- ``random``: the control, a random direction at the same cosine to q as a given q'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saedb.evaluation.cases import Case
from saedb.evaluation.topics import Topic
from saedb.sae import SAE

PAPER_GRID = ((0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), (0.0, -0.25, -0.5, -1.0, -2.5, -5.0))
SMALL_GRID = ((0.5, 2.5, 10.0), (0.0, -1.0, -5.0))
GRIDS = {"paper": PAPER_GRID, "small": SMALL_GRID}


@dataclass(frozen=True)
class Setting:
    """One row of the results: a method and its strengths (None for rewriting)."""

    method: str
    a_up: float | None = None
    a_down: float | None = None


def direction(sae: SAE, topic: Topic) -> np.ndarray:
    rows = sae.w_dec[list(topic.features)]
    if len(topic.features) == 1:
        return rows[0]
    total = rows.sum(axis=0)
    return total / np.linalg.norm(total)


def add(sae: SAE, case: Case, a_up: float, a_down: float) -> np.ndarray:
    return case.vector + a_up * direction(sae, case.up) + a_down * direction(sae, case.down)


def clamp(sae: SAE, case: Case, a_up: float) -> np.ndarray:
    codes = sae.encode(case.vector)
    latents = np.zeros(sae.n_latents, dtype=np.float32)
    latents[codes.indices[0]] = codes.values[0]
    latents[list(case.down.features)] = 0.0
    latents[list(case.up.features)] = a_up
    latents[np.argsort(-latents, kind="stable")[sae.k:]] = 0.0
    return latents @ sae.w_dec + sae.b_pre


def random_at_cosine(query: np.ndarray, target_cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``target_cosine`` to ``query``, otherwise in a random direction."""
    unit = query / np.linalg.norm(query)
    noise = rng.standard_normal(unit.shape[0]).astype(np.float32)
    noise -= (noise @ unit) * unit
    noise /= np.linalg.norm(noise)
    c = float(np.clip(target_cosine, -1.0, 1.0))
    return (c * unit + np.sqrt(1.0 - c * c) * noise).astype(np.float32)
