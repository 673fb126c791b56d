"""A label's round trip through the embedding space: embed the label text with the database's own
embedder, ``sae_encode`` it, and see where the labelled feature lands.

- ``rank``: the feature's place among the k active features of the label's codes (1 =
  strongest); None when the feature is not among them.
- ``cosine``: the label's embedding against the feature's (unit) decoder row.

Unlike the predictor's scores, this asks the SAE, not the documents: a label that names what a
trained feature encodes should switch that feature on. A mismatched label almost never does
(chance: k / n_latents for hit@k). The offline labeller ranks its candidate phrases this way
(``OfflineLabeller``), so for its labels the round trip is a selection criterion; for an LLM's
labels it is an independent test. The untrained control shows what selection alone buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saedb.backends import Backend
from saedb.embedders import Embedder, get_embedder, runnable_here
from saedb.sae import SAE, unit_rows


@dataclass(frozen=True)
class Trip:
    rank: int | None  # 1-based rank of the feature among the label's active features
    activation: float  # the feature's activation on the label (0: inactive)
    cosine: float  # label embedding . unit decoder row


class RoundTrip:
    """Round trips of texts through one model's SAE with its database's embedder."""

    def __init__(self, embedder: Embedder, sae: SAE) -> None:
        self.embedder = embedder
        self.sae = sae
        self.decoder = unit_rows(sae.w_dec)

    @classmethod
    def for_model(cls, backend: Backend, model_id: int) -> "RoundTrip | None":
        """None when the database's embedder cannot run on this machine (vectors made elsewhere)."""
        name = backend.model_row(model_id)["embedder"]
        if not runnable_here(name):
            return None
        return cls(get_embedder(name), backend.load_sae(model_id))

    def trips(self, texts: list[str], features: list[int]) -> list[Trip]:
        """The round trip of each text to its feature (``features[i]`` for ``texts[i]``)."""
        if not texts:
            return []
        vectors = self.embedder.embed(texts)
        codes = self.sae.encode(vectors)
        found = []
        for row, (vector, feature) in enumerate(zip(vectors, features)):
            hits = np.flatnonzero((codes.indices[row] == feature) & (codes.values[row] > 0))
            rank = int(hits[0]) + 1 if hits.size else None
            activation = float(codes.values[row, hits[0]]) if hits.size else 0.0
            found.append(Trip(rank, activation, float(vector @ self.decoder[feature])))
        return found


def store_trips(backend: Backend, model_id: int, labeller: str, trip: RoundTrip | None) -> int:
    """Measure and store the round trip of every label of (model, labeller) that has none yet;
    returns how many were measured (0 without an embedder)."""
    rows = backend.query("SELECT feature_id, label FROM feature_labels WHERE model_id = ? AND labeller = ? "
                         "AND decoder_cosine IS NULL ORDER BY feature_id", (model_id, labeller))
    if trip is None or not rows:
        return 0
    measured = trip.trips([label for _, label in rows], [feature for feature, _ in rows])
    with backend.transaction():
        for (feature, _), found in zip(rows, measured):
            backend.execute("UPDATE feature_labels SET roundtrip_rank = ?, decoder_cosine = ? "
                            "WHERE model_id = ? AND labeller = ? AND feature_id = ?",
                            (found.rank, found.cosine, model_id, labeller, feature))
    return len(rows)
