"""The numpy SAE core against its definition, written out densely."""

import numpy as np
import pytest

from saedb.errors import InvalidInputError
from saedb.sae import SAE, SparseCodes


def dense_reference(sae: SAE, x: np.ndarray) -> np.ndarray:
    """ReLU(TopK(W_enc (x - b_pre) + b_lat)) as a dense (B, n) matrix, by brute force."""
    pre = (x.astype(np.float64) - sae.b_pre) @ sae.w_enc.T.astype(np.float64) + sae.b_lat
    out = np.zeros_like(pre)
    for row, values in enumerate(pre):
        top = np.argsort(-values, kind="stable")[: sae.k]
        out[row, top] = np.maximum(values[top], 0)
    return out


def to_dense(codes: SparseCodes, n: int) -> np.ndarray:
    dense = np.zeros((codes.indices.shape[0], n))
    np.put_along_axis(dense, codes.indices.astype(np.int64), codes.values, axis=1)
    return dense


@pytest.fixture
def sae() -> SAE:
    return SAE.random(d=32, n=128, k=8, seed=1)


def test_encode_matches_dense_definition(sae: SAE) -> None:
    x = np.random.default_rng(2).standard_normal((50, 32)).astype(np.float32)
    codes = sae.encode(x)
    assert codes.indices.shape == (50, 8)
    np.testing.assert_allclose(to_dense(codes, 128), dense_reference(sae, x), rtol=1e-5, atol=1e-6)
    # sorted by activation, descending
    assert (np.diff(codes.values, axis=1) <= 0).all()


def test_relu_drops_negative_latents() -> None:
    sae = SAE.random(d=8, n=16, k=4, seed=3)
    sae = SAE(w_enc=sae.w_enc, b_lat=np.full(16, -100, np.float32), w_dec=sae.w_dec, b_pre=sae.b_pre, k=4)
    codes = sae.encode(np.ones(8, np.float32))
    assert codes.rows() == [[]]
    np.testing.assert_allclose(sae.decode(codes), sae.b_pre[None, :])


def test_ties_break_by_feature_id() -> None:
    w = np.zeros((6, 2), np.float32)
    w[:, 0] = 1.0
    sae = SAE(w_enc=w, b_lat=np.zeros(6, np.float32), w_dec=w, b_pre=np.zeros(2, np.float32), k=3)
    codes = sae.encode(np.array([1.0, 0.0], np.float32))
    assert codes.indices.tolist() == [[0, 1, 2]]


def test_decode_and_steer(sae: SAE) -> None:
    x = np.random.default_rng(4).standard_normal(32).astype(np.float32)
    codes = sae.encode(x)
    expected = sae.b_pre + sum(v * sae.w_dec[i] for i, v in codes.rows()[0])
    np.testing.assert_allclose(sae.decode(codes)[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sae.steer(x, 5, 2.5)[0], x + np.float32(2.5) * sae.w_dec[5])
    family = sae.steer(x, [1, 2, 3], [0.5, -1.0, 2.0])[0]
    np.testing.assert_allclose(family, x + 0.5 * sae.w_dec[1] - sae.w_dec[2] + 2 * sae.w_dec[3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sae.steer(x, [1, 2], 0.5)[0], x + 0.5 * (sae.w_dec[1] + sae.w_dec[2]), atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s.encode(np.ones(31)), "31 dimensions, expected 32"),
        (lambda s: s.encode(np.full(32, np.nan)), "NaN"),
        (lambda s: s.encode(np.ones((2, 2, 32))), "vector or a matrix"),
        (lambda s: s.steer(np.ones(32), 128, 1.0), "feature 128 does not exist"),
        (lambda s: s.steer(np.ones(32), -1, 1.0), "feature -1 does not exist"),
        (lambda s: s.steer(np.ones(32), [1, 2], [1.0, 2.0, 3.0]), "2 features but 3 strengths"),
        (lambda s: s.steer(np.ones(32), 1, float("nan")), "strength is NaN"),
        (lambda s: SAE(w_enc=s.w_enc, b_lat=s.b_lat, w_dec=s.w_dec, b_pre=s.b_pre, k=0), "k must be"),
        (lambda s: SAE(w_enc=s.w_enc, b_lat=s.b_lat, w_dec=s.w_dec[:5], b_pre=s.b_pre, k=2), "inconsistent SAE shapes"),
    ],
)
def test_bad_input_is_a_clear_error(sae: SAE, call, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        call(sae)
