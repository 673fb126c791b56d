"""The torch top-k SAE trainer: the paper's initialisation and constraints, AuxK, export
to the numpy core, training on real embeddings, and atomic write-back under kill -9."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from contextlib import nullcontext
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from saedb.backends import Backend, connect
from saedb.models import publish_model
from saedb.sae import SAE
from saedb.trainer import TrainConfig
from saedb.trainer.topk_sae import TopKSAE, normalised_mse
from saedb.errors import InvalidInputError
from saedb.holdout import held_out
from saedb.trainer.stream import ArraySource, ChunkedRows, DatabaseSource, training_batches
from saedb.trainer.train import evaluate, new_trainer, train_from_db, train_sae, train_stream
from tests.conftest import embeddings_of

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("fit_scale", [False, True])
def test_initialisation_follows_the_paper(fit_scale: bool) -> None:
    x = torch.randn(500, 16) + 3
    model = new_trainer(x, TrainConfig(k=4, n_latents=64, median_sample=500, fit_encoder_scale=fit_scale),
                        torch.Generator().manual_seed(0)).model
    torch.testing.assert_close(model.b_pre.detach(), x.median(dim=0).values)
    torch.testing.assert_close(model.w_dec.norm(dim=1), torch.ones(64))
    scale = model.w_enc.detach().norm(dim=1)
    torch.testing.assert_close(model.w_enc.detach(), scale[:, None] * model.w_dec.detach())  # the paper's tie, W_enc = s * W_dec^T
    assert torch.allclose(scale, scale[0]) and (scale[0] < 1 if fit_scale else float(scale[0]) == pytest.approx(1.0))
    assert not model.b_lat.any()


def test_the_fitted_encoder_scale_is_the_least_squares_scale_of_the_first_reconstruction() -> None:
    """W_enc starts as s * W_dec^T: any other s reconstructs the sample worse, the top-k choice is
    unchanged, and the direction stays the decoder's (the paper's tie, up to one number)."""
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(2000, 24) + torch.randn(24), dim=1)
    b_pre = x.median(dim=0).values
    model = TopKSAE(24, 96, 6, b_pre)
    chosen_before = model(x)[1].sort(dim=1).values
    scale = model.fit_encoder_scale(x)
    assert 0 < scale < 1  # unit encoder rows overshoot: the summed top-k projections exceed x - b_pre
    torch.testing.assert_close(model.w_enc, scale * model.w_dec)
    assert torch.equal(model(x)[1].sort(dim=1).values, chosen_before)
    error = lambda s: float(((s / scale) * (model(x)[0] - b_pre) - (x - b_pre)).pow(2).sum())  # noqa: E731
    assert error(scale) < min(error(scale * 0.95), error(scale * 1.05), error(1.0))


def test_the_encoder_starts_at_a_fraction_of_the_fitted_scale() -> None:
    """W_enc starts at factor * s * W_dec^T (s the least-squares scale): a smaller start trains to
    a lower held-out NMSE (README, Training); a factor that is not a positive number is refused."""
    x = torch.nn.functional.normalize(torch.randn(500, 16) + 3, dim=1)
    cfg = TrainConfig(k=4, n_latents=64, median_sample=500, encoder_scale_factor=0.25)
    model = new_trainer(x, cfg, torch.Generator().manual_seed(0)).model
    unscaled = TopKSAE(16, 64, 4, model.b_pre.detach())
    with torch.no_grad():
        unscaled.w_dec.copy_(model.w_dec)
        unscaled.w_enc.copy_(model.w_dec)
    fitted = unscaled.fit_encoder_scale(x)
    torch.testing.assert_close(model.w_enc.detach(), 0.25 * fitted * model.w_dec.detach())
    assert TrainConfig().encoder_scale_factor == 0.3
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidInputError, match="encoder_scale_factor"):
            TrainConfig(encoder_scale_factor=bad)


def test_gradient_clipping_to_global_norm() -> None:
    from saedb.trainer.train import clip_grad_norm

    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0, 0.0])
    clip_grad_norm(params, 10.0)
    assert params[0].grad[0] == 3.0  # below the limit: untouched
    clip_grad_norm(params, 1.0)
    total = torch.linalg.vector_norm(torch.cat([p.grad for p in params]))
    assert total == pytest.approx(1.0, rel=1e-5) and params[1].grad[1] / params[0].grad[0] == pytest.approx(4 / 3)


def test_decoder_gradient_projection_and_renormalisation() -> None:
    model = TopKSAE(8, 32, 4, torch.zeros(8))
    x = torch.randn(64, 8)
    normalised_mse(x, model(x)[0]).backward()
    model.project_decoder_grad()
    parallel = (model.w_dec.grad * model.w_dec).sum(dim=1)
    assert parallel.abs().max() < 1e-6
    model.w_dec.data *= 3
    model.normalise_decoder()
    torch.testing.assert_close(model.w_dec.norm(dim=1), torch.ones(32))


def test_aux_k_trains_dead_latents_only_through_the_residual() -> None:
    torch.manual_seed(0)
    model = TopKSAE(8, 32, 2, torch.zeros(8))
    x = torch.randn(16, 8)
    live = torch.zeros(32, dtype=torch.bool)
    indices, _, no_aux, _ = model.encode_for_training(x, live, k_aux=4)
    assert no_aux.shape == (16, 0)
    dead = torch.ones(32, dtype=torch.bool)
    dead[indices.flatten()] = False
    indices, values, aux_indices, aux_values = model.encode_for_training(x, dead, k_aux=4)
    assert dead[aux_indices].all() and aux_indices.shape == (16, 4)
    x_hat = model.decode_sparse(indices, values)
    torch.testing.assert_close(x_hat, model(x)[0])
    normalised_mse((x - x_hat).detach(), model.decode_sparse(aux_indices, aux_values, with_bias=False)).backward()
    grad_rows = model.w_enc.grad.abs().sum(dim=1)
    assert grad_rows[dead].sum() > 0 and grad_rows[~dead].sum() == 0


def test_sparse_encoder_gradient_equals_dense_autograd() -> None:
    torch.manual_seed(1)
    model = TopKSAE(16, 64, 4, torch.randn(16))
    with torch.no_grad():
        model.b_lat.normal_()
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::5] = True
    indices, values, aux_indices, aux_values = model.encode_for_training(x, dead, k_aux=3)
    (values.pow(2).sum() + aux_values.sum()).backward()
    sparse_grads = [p.grad.clone() for p in (model.w_enc, model.b_lat, model.b_pre)]
    model.zero_grad()
    pre = torch.nn.functional.linear(x - model.b_pre, model.w_enc, model.b_lat)  # the textbook dense path
    dense_values = torch.relu(pre.gather(1, indices))
    dense_aux = torch.relu(pre.gather(1, aux_indices))
    (dense_values.pow(2).sum() + dense_aux.sum()).backward()
    for sparse, dense in zip(sparse_grads, (model.w_enc.grad, model.b_lat.grad, model.b_pre.grad)):
        torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)


def test_exported_model_encodes_exactly_like_torch() -> None:
    x = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    result = train_sae(x, TrainConfig(k=6, n_latents=96, steps=12, batch_size=64, lr=1e-3))
    sae = result.model.to_numpy()
    with torch.no_grad():
        _, indices, values = result.model(torch.from_numpy(x))
    torch_codes = {(r, int(i)): float(v) for r, (ii, vv) in enumerate(zip(indices, values)) for i, v in zip(ii, vv) if v > 0}
    numpy_codes = {(r, i): v for r, row in enumerate(sae.encode(x).rows()) for i, v in row}
    assert torch_codes.keys() == numpy_codes.keys()
    np.testing.assert_allclose([numpy_codes[key] for key in torch_codes], list(torch_codes.values()), rtol=1e-4, atol=1e-5)


@pytest.fixture
def astro_2000(backend: Backend, embedder, tmp_path: Path) -> Backend:
    from saedb.loaders import load_corpus
    from tests.conftest import ASTRO, write_slice

    load_corpus(backend, write_slice(ASTRO, tmp_path / "astro_2000.jsonl.gz", 2000), embedder, batch_size=1000, progress=False)
    return backend


def test_training_on_real_embeddings_scales_with_width_and_writes_back(astro_2000: Backend) -> None:
    losses = []
    for n in (128, 256, 512):
        cfg = TrainConfig(k=16, n_latents=n, steps=175, batch_size=256, lr=1e-3)
        model_id, result = train_from_db(astro_2000, cfg, "astro")
        assert result.metrics["dead_fraction"] < 0.10
        assert result.metrics["l0"] <= 16
        assert result.history[-1] < result.history[0]
        losses.append(result.metrics["normalised_mse"])
    assert losses[0] > losses[1] > losses[2]
    stored = astro_2000.model_row(model_id)
    assert (stored["version"], stored["n_latents"], stored["k"]) == (3, 512, 16)
    assert stored["metrics"]["normalised_mse"] == pytest.approx(losses[2])
    per_doc = astro_2000.query("SELECT count(DISTINCT doc_id), max(n) FROM (SELECT doc_id, count(*) AS n FROM sae_codes WHERE model_id = ? GROUP BY doc_id) t", (model_id,))
    assert per_doc[0][0] == 2000 and per_doc[0][1] <= 16


KILLED_PUBLISH = textwrap.dedent(
    """
    import sys, time
    from saedb.backends import connect
    from saedb.models import publish_model
    from saedb.sae import SAE

    backend = connect(sys.argv[1])
    original = type(backend).copy_codes

    def slow_copy(self, *args):
        original(self, *args)
        print("WRITING", flush=True)
        time.sleep(120)

    type(backend).copy_codes = slow_copy
    publish_model(backend, SAE.random(256, 256, 8, seed=3), "victim")
    """
)


def test_kill_9_during_write_back_leaves_previous_state_intact(loaded: Backend, random_sae: SAE, db_url: str) -> None:
    previous = publish_model(loaded, random_sae, "kept")
    before = {t: loaded.count(t) for t in ("sae_models", "sae_encoder", "sae_decoder", "sae_codes")}
    loaded.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", KILLED_PUBLISH, db_url], stdout=subprocess.PIPE, env=env, text=True)
    assert child.stdout.readline().strip() == "WRITING"  # weights and a first codes batch are written
    if db_url.startswith("postgresql"):
        with connect(db_url) as reader:  # concurrently: the half-written version is invisible
            assert reader.query("SELECT count(*) FROM sae_models WHERE name = 'victim'")[0][0] == 0
    child.kill()
    child.wait()
    with connect(db_url) as after:
        assert {t: after.count(t) for t in before} == before
        assert after.query("SELECT count(*) FROM sae_models WHERE name = 'victim'")[0][0] == 0
        x = embeddings_of(after)[1][:1]
        got = after.query("SELECT f.feature_id FROM unnest(sae_encode(?, ?)) AS f", (after.vector_param(x[0]), previous))
        assert [r[0] for r in got] == [i for i, _ in random_sae.encode(x).rows()[0]]
        publish_model(after, random_sae, "after-crash")  # and the database takes the next version


def test_scaling_grid_stores_runs_fits_and_plots(astro_2000: Backend, tmp_path: Path) -> None:
    from saedb.trainer.scaling import fit_power_laws, load_runs, plot_scaling, run_grid

    base = TrainConfig(steps=70, batch_size=256, lr=1e-3)
    run_grid(astro_2000, [8, 16], [64, 128, 256], base, grid="test")
    run_grid(astro_2000, [8], [64], base, grid="test")  # a re-run replaces its row
    runs = load_runs(astro_2000, "test")
    assert [(r["k"], r["n_latents"]) for r in runs] == [(8, 64), (8, 128), (8, 256), (16, 64), (16, 128), (16, 256)]
    fits = fit_power_laws(runs)
    assert [f.k for f in fits] == [8, 16] and all(f.alpha < 0 for f in fits)
    assert runs[1]["train_flops"] == 2 * runs[0]["train_flops"] - 70 * 256 * 6 * 256 * 8
    # the scaling_fits view: the same L(n) fits in SQL, and L(k) per n
    in_sql = {(along, k, n): (exponent, coefficient) for along, k, n, exponent, coefficient in astro_2000.query(
        "SELECT along, k, n_latents, exponent, coefficient FROM scaling_fits WHERE grid = 'test'")}
    assert sorted(key for key in in_sql if key[0] == "n") == [("n", f.k, None) for f in fits]
    for f in fits:
        assert in_sql[("n", f.k, None)] == pytest.approx((f.alpha, f.coefficient), rel=1e-9)
    for n in (64, 128, 256):
        points = np.array([(r["k"], r["normalised_mse"]) for r in runs if r["n_latents"] == n], dtype=float)
        beta, log_c = np.polyfit(np.log(points[:, 0]), np.log(points[:, 1]), 1)
        assert in_sql[("k", None, n)] == pytest.approx((beta, np.exp(log_c)), rel=1e-9)
    png, svg = plot_scaling(runs, fits, tmp_path / "plots")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.read_text().lstrip().startswith("<?xml")


# --- streaming: memory bounded by the chunk, not the corpus ---------------------------

class CountingSource(DatabaseSource):
    """The database source, recording how many rows each chunk read returned."""

    reads: list[int]

    def read_blocks(self, blocks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        parts = list(super().read_blocks(blocks))
        self.reads.append(sum(len(ids) for ids, _ in parts))
        yield from parts


def test_streamed_training_reads_one_chunk_at_a_time_and_never_trains_on_held_out_rows(astro_2000: Backend) -> None:
    source = CountingSource(lambda: nullcontext(astro_2000), block_rows=100)
    source.reads = []
    generator = torch.Generator().manual_seed(0)
    rows = ChunkedRows(source, chunk_rows=400, fraction=0.05, seed=3)
    assert not rows.single
    trained = torch.cat(list(islice(training_batches(rows, 64, generator), 90)))  # three passes of ~1900 rows
    assert max(source.reads) <= 400 and len(source.reads) >= 10
    ids, matrix = zip(*astro_2000.iter_embeddings(5000))
    ids, matrix = np.concatenate(ids), np.concatenate(matrix)
    held = held_out(ids, 0.05, seed=3)
    assert 60 <= held.sum() <= 140  # about 5% of 2000
    row_of = {row.tobytes(): i for i, row in enumerate(matrix)}
    seen = {row_of[row.numpy().tobytes()] for row in trained}
    assert not seen & set(np.flatnonzero(held).tolist())
    assert seen == {row_of[row.tobytes()] for row in matrix[~held]}  # every training row within three passes


def test_streamed_training_matches_training_in_memory(astro_2000: Backend) -> None:
    cfg = TrainConfig(k=16, n_latents=256, steps=200, batch_size=128, lr=1e-3)
    whole = train_stream(DatabaseSource(lambda: nullcontext(astro_2000)), cfg)
    streamed = train_stream(DatabaseSource(lambda: nullcontext(astro_2000), block_rows=100), replace(cfg, chunk_rows=300))
    for key in ("samples", "holdout_samples"):
        assert streamed.metrics[key] == whole.metrics[key]
    assert whole.metrics["samples"] + whole.metrics["holdout_samples"] == 2000
    assert streamed.metrics["normalised_mse"] == pytest.approx(whole.metrics["normalised_mse"], rel=0.1)
    assert streamed.metrics["holdout_normalised_mse"] == pytest.approx(whole.metrics["holdout_normalised_mse"], rel=0.1)
    x = torch.from_numpy(np.concatenate([m for _, m in astro_2000.iter_embeddings(5000)]))
    everything = evaluate(streamed.model, x)["normalised_mse"]  # the chunked final pass equals one pass over all rows
    weighted = (streamed.metrics["normalised_mse"] * streamed.metrics["samples"]
                + streamed.metrics["holdout_normalised_mse"] * streamed.metrics["holdout_samples"]) / 2000
    assert everything == pytest.approx(weighted, rel=0.05)


def test_a_non_finite_value_in_a_later_chunk_is_an_error() -> None:
    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    x[2900, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        train_stream(ArraySource(x, block_rows=250), TrainConfig(k=4, n_latents=32, steps=100, batch_size=64, chunk_rows=500))


def test_training_says_how_long_it_has_left() -> None:
    """`saedb train` at the paper's budget ran for many minutes with no estimate."""
    x = np.random.default_rng(0).normal(size=(600, 16)).astype(np.float32)
    lines: list[str] = []
    train_stream(ArraySource(x), TrainConfig(k=4, n_latents=32, steps=1001, batch_size=32), lines.append)
    assert re.fullmatch(r"step 50/1001: about \d+ s left", lines[0]), lines
    assert all(re.search(r"about \d+ (s|min) left$", line) for line in lines if line.startswith(("step 500/", "step 1000/")))
    assert "left" not in lines[-1] and lines[-1].startswith("step 1001/1001")
