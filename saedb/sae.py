"""The numpy SAE math: top-k encode, decode and steering.

This is the single reference implementation. DuckDB UDFs call it directly, the trainer
exports into it, the Postgres SQL functions are tested against it.

Conventions: ``w_enc`` and ``w_dec`` are (n_latents, d) with one row per latent, so a
latent's decoder direction is ``w_dec[i]``.
    encode(x) = ReLU(TopK(w_enc @ (x - b_pre) + b_lat))
    decode(z) = z @ w_dec + b_pre
    steer(x, i, s) = x + s * w_dec[i]
    steer_toward(x, i, t) = the unit vector a fraction t of the angle from x to w_dec[i]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from saedb.errors import InvalidInputError


@dataclass(frozen=True)
class SparseCodes:
    """Top-k codes for a batch: (B, k) feature ids and activations, sorted by activation
    descending (ties by feature id). Slots whose activation is 0 are inactive."""

    indices: np.ndarray  # int32 (B, k)
    values: np.ndarray  # float32 (B, k)

    def rows(self) -> list[list[tuple[int, float]]]:
        """Active (feature_id, activation) pairs per row, zeros dropped."""
        return [
            [(int(i), float(v)) for i, v in zip(idx, val) if v > 0]
            for idx, val in zip(self.indices, self.values)
        ]

    def active_mask(self) -> np.ndarray:
        return self.values > 0


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its length, in the matrix's own dtype; a zero row stays zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1)


def cosine(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> float:
    """The cosine of two vectors (in float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def toward(x: np.ndarray, direction: np.ndarray, fraction: float) -> np.ndarray:
    """Rows of x moved ``fraction`` of the angle toward ``direction`` (spherical interpolation of
    the unit vectors; a negative fraction moves toward -direction), as unit rows.

    The steering scale that means the same for every query and feature: 0 is the query, 0.5 is
    equally close to the query and the feature (the point that ranks documents having both
    first), 1 is the feature's direction alone. Additive steering (``steer``) moves a query by a
    fixed length, which is a small turn for a feature nearly aligned with the query and a
    complete one for an unrelated feature."""
    if not np.isfinite(fraction) or not -1 <= fraction <= 1:
        raise InvalidInputError(f"steering fraction must be between -1 and 1, got {fraction}")
    rows = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise InvalidInputError("cannot steer a zero vector toward a direction")
    unit = rows / norms
    target = np.sign(fraction) * np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction)
    t = abs(fraction)
    cosine = np.clip(unit @ target, -1.0, 1.0)[:, None]
    angle = np.arccos(cosine)
    sine = np.sin(angle)
    if t and np.any((sine < 1e-7) & (cosine < 0)):
        raise InvalidInputError("the query points exactly away from the steering direction: no way toward it is shortest")
    aligned = sine < 1e-7  # already pointing along the direction: it stays
    safe = np.where(aligned, 1.0, sine)
    moved = (np.sin((1 - t) * angle) * unit + np.sin(t * angle) * target) / safe
    return np.where(aligned, unit, moved).astype(np.float32)


def as_matrix(x: np.ndarray | Sequence[float], d: int, what: str = "embedding") -> np.ndarray:
    """Validate embeddings as a float32 (B, d) matrix: right dimension, finite values."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be a vector or a matrix, got {arr.ndim} dimensions")
    if arr.shape[1] != d:
        raise InvalidInputError(f"{what} has {arr.shape[1]} dimensions, expected {d}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what} contains NaN or infinite values")
    return arr


@dataclass(frozen=True)
class SAE:
    """A top-k sparse autoencoder's weights."""

    w_enc: np.ndarray  # (n, d)
    b_lat: np.ndarray  # (n,)
    w_dec: np.ndarray  # (n, d)
    b_pre: np.ndarray  # (d,)
    k: int

    def __post_init__(self) -> None:
        n, d = self.w_enc.shape
        if self.w_dec.shape != (n, d) or self.b_lat.shape != (n,) or self.b_pre.shape != (d,):
            raise InvalidInputError(
                f"inconsistent SAE shapes: w_enc {self.w_enc.shape}, w_dec {self.w_dec.shape}, "
                f"b_lat {self.b_lat.shape}, b_pre {self.b_pre.shape}"
            )
        if not 0 < self.k <= n:
            raise InvalidInputError(f"k must be in 1..{n}, got {self.k}")
        for name in ("w_enc", "b_lat", "w_dec", "b_pre"):
            object.__setattr__(self, name, np.ascontiguousarray(getattr(self, name), dtype=np.float32))

    @property
    def d(self) -> int:
        return self.w_enc.shape[1]

    @property
    def n_latents(self) -> int:
        return self.w_enc.shape[0]

    def pre_activations(self, x: np.ndarray) -> np.ndarray:
        """w_enc @ (x - b_pre) + b_lat for a validated (B, d) batch."""
        with np.errstate(over="ignore"):  # overflow is checked by the caller
            return (x - self.b_pre) @ self.w_enc.T + self.b_lat

    def encode(self, x: np.ndarray | Sequence[float]) -> SparseCodes:
        """Top-k codes of a (B, d) batch or a single vector."""
        pre = self.pre_activations(as_matrix(x, self.d))
        if not np.isfinite(pre).all():  # finite inputs whose float32 sums overflow
            raise InvalidInputError("activations overflow: the embedding's values are too large")
        k = self.k
        top = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        top_vals = np.take_along_axis(pre, top, axis=1)
        order = np.lexsort((top, -top_vals), axis=1)  # activation desc, then feature id asc
        indices = np.take_along_axis(top, order, axis=1).astype(np.int32)
        values = np.maximum(np.take_along_axis(top_vals, order, axis=1), 0).astype(np.float32)
        return SparseCodes(indices, values)

    def decode(self, codes: SparseCodes) -> np.ndarray:
        """Reconstruct (B, d) embeddings from sparse codes."""
        self.check_features(codes.indices)
        return np.einsum("bk,bkd->bd", codes.values, self.w_dec[codes.indices]) + self.b_pre

    def steer(
        self,
        x: np.ndarray | Sequence[float],
        features: int | Sequence[int],
        strengths: float | Sequence[float],
    ) -> np.ndarray:
        """x + sum_i strength_i * w_dec[feature_i] for one feature or a family of features."""
        feats = np.atleast_1d(np.asarray(features, dtype=np.int64))
        strg = np.atleast_1d(np.asarray(strengths, dtype=np.float32))
        if np.ndim(strengths) == 0:  # one number for every feature; a list must match the features
            strg = np.repeat(strg, feats.shape[0])
        if feats.shape != strg.shape:
            raise InvalidInputError(f"{feats.shape[0]} features but {strg.shape[0]} strengths")
        if not np.isfinite(strg).all():
            raise InvalidInputError("steering strength is NaN or infinite")
        self.check_features(feats)
        x = as_matrix(x, self.d)
        direction = strg[0] * self.w_dec[feats[0]]
        for f, s in zip(feats[1:], strg[1:]):
            direction = direction + s * self.w_dec[f]
        with np.errstate(over="ignore"):
            steered = x + direction
        if not np.isfinite(steered).all():
            raise InvalidInputError("steering overflows float32: the steered vector has infinite values")
        return steered

    def steer_toward(
        self,
        x: np.ndarray | Sequence[float],
        features: int | Sequence[int],
        fractions: float | Sequence[float],
    ) -> np.ndarray:
        """For each feature in turn, move (unit) x the fraction of the angle toward the
        feature's decoder direction (negative: toward its opposite); see ``toward``."""
        feats = np.atleast_1d(np.asarray(features, dtype=np.int64))
        steps = np.atleast_1d(np.asarray(fractions, dtype=np.float64))
        if feats.shape != steps.shape:
            raise InvalidInputError(f"{feats.shape[0]} features but {steps.shape[0]} fractions")
        self.check_features(feats)
        steered = as_matrix(x, self.d)
        for feature, fraction in zip(feats, steps):
            steered = toward(steered, self.w_dec[feature], float(fraction))
        return steered

    def family_direction(self, features: Sequence[int]) -> np.ndarray:
        """The unit direction of a family: its members' summed decoder rows."""
        feats = np.asarray(features, dtype=np.int64)
        self.check_features(feats)
        total = self.w_dec[feats].sum(axis=0, dtype=np.float64) if feats.size else np.zeros(self.d)
        norm = float(np.linalg.norm(total))
        if norm == 0:
            raise InvalidInputError("a family needs at least one feature with a non-zero direction")
        return (total / norm).astype(np.float32)

    def family_strengths(self, features: Sequence[int], strength: float) -> np.ndarray:
        """Per-feature strengths that move x by ``strength`` along the unit direction of the
        summed decoder rows of a family (comparable to one feature's unit decoder row)."""
        feats = np.asarray(features, dtype=np.int64)
        self.check_features(feats)
        norm = float(np.linalg.norm(self.w_dec[feats].sum(axis=0)))
        if not feats.size or norm == 0:
            raise InvalidInputError("a family needs at least one feature with a non-zero direction")
        return np.full(feats.shape[0], strength / norm, dtype=np.float32)

    def check_features(self, features: np.ndarray) -> None:
        """Raise InvalidInputError if any feature id is outside 0..n-1."""
        features = np.asarray(features)
        if features.size and (features.min() < 0 or features.max() >= self.n_latents):
            bad = features[(features < 0) | (features >= self.n_latents)].flat[0]
            raise InvalidInputError(
                f"feature {int(bad)} does not exist (this model has features 0..{self.n_latents - 1})"
            )

    @classmethod
    def random(cls, d: int, n: int, k: int, seed: int = 0) -> "SAE":
        """A randomly initialised SAE in the paper's init (unit-norm decoder, w_enc = w_dec)."""
        rng = np.random.default_rng(seed)
        w_dec = rng.standard_normal((n, d)).astype(np.float32)
        w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
        b_lat = (rng.standard_normal(n) * 0.01).astype(np.float32)
        b_pre = (rng.standard_normal(d) * 0.01).astype(np.float32)
        return cls(w_enc=w_dec.copy(), b_lat=b_lat, w_dec=w_dec, b_pre=b_pre, k=k)
