"""Interchange against the real libraries (optional extra `interop`: sae-lens, eai-sparsify):
an SAE exported by saedb loads in each library and encodes exactly as saedb's numpy core, and
an SAE written by each library imports into saedb with the same codes. Skipped when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is not installed (pip install 'saedb[interop]')")
sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install 'saedb[interop]')")

from saedb.interchange import export_sae, import_sae  # noqa: E402
from saedb.sae import SAE  # noqa: E402


def dense(sae: SAE, x: np.ndarray) -> np.ndarray:
    codes = sae.encode(x)
    out = np.zeros((x.shape[0], sae.n_latents), np.float32)
    np.put_along_axis(out, codes.indices.astype(np.int64), codes.values, axis=1)
    return out


@pytest.fixture
def trained_like() -> tuple[SAE, np.ndarray]:
    rng = np.random.default_rng(0)
    sae = SAE.random(d=64, n=256, k=8, seed=5)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    return sae, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sparsify_reads_saedb_and_saedb_reads_sparsify(tmp_path: Path, trained_like) -> None:
    sae, x = trained_like
    coder = sparsify.SparseCoder.load_from_disk(export_sae(sae, tmp_path / "out", "sparsify"))
    encoded = coder.encode(torch.from_numpy(x))
    theirs = np.zeros((x.shape[0], sae.n_latents), np.float32)
    np.put_along_axis(theirs, encoded.top_indices.numpy(), encoded.top_acts.detach().numpy(), axis=1)
    np.testing.assert_allclose(theirs, dense(sae, x), atol=1e-5)
    coder.save_to_disk(tmp_path / "theirs")
    np.testing.assert_allclose(dense(import_sae(tmp_path / "theirs"), x), dense(sae, x), atol=1e-5)


def test_sae_lens_reads_saedb_and_saedb_reads_sae_lens(tmp_path: Path, trained_like) -> None:
    sae, x = trained_like
    model = sae_lens.SAE.load_from_disk(export_sae(sae, tmp_path / "out", "saelens"))
    theirs = model.encode(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(theirs, dense(sae, x), atol=1e-5)
    model.save_model(tmp_path / "theirs")
    np.testing.assert_allclose(dense(import_sae(tmp_path / "theirs"), x), dense(sae, x), atol=1e-5)
