"""sparsify and SAELens formats: round trips, and the formats' own encode formulas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from saedb.backends import Backend
from saedb.cli import app
from saedb.errors import InvalidInputError
from saedb.interchange import export_sae, import_sae
from saedb.models import publish_model
from saedb.sae import SAE


def topk_relu(pre: np.ndarray, k: int) -> np.ndarray:
    """The formats' encode: keep the k largest of ReLU(pre) per row, dense."""
    out = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1)[:, :k]
    np.put_along_axis(out, top, np.maximum(np.take_along_axis(pre, top, axis=1), 0), axis=1)
    return out


@pytest.mark.parametrize("fmt", ["sparsify", "saelens"])
def test_round_trip_is_exact(tmp_path: Path, random_sae: SAE, fmt: str) -> None:
    back = import_sae(export_sae(random_sae, tmp_path / fmt, fmt))
    for name in ("w_enc", "b_lat", "w_dec", "b_pre"):
        np.testing.assert_array_equal(getattr(back, name), getattr(random_sae, name))
    assert back.k == random_sae.k


def test_files_follow_each_format_and_encode_alike(tmp_path: Path, random_sae: SAE) -> None:
    x = np.random.default_rng(3).standard_normal((20, 256)).astype(np.float32)
    ours = np.zeros((20, 512))
    codes = random_sae.encode(x)
    np.put_along_axis(ours, codes.indices.astype(np.int64), codes.values, axis=1)

    export_sae(random_sae, tmp_path / "sp", "sparsify")
    cfg, t = json.loads((tmp_path / "sp" / "cfg.json").read_text()), load_file(str(tmp_path / "sp" / "sae.safetensors"))
    assert (cfg["num_latents"], cfg["k"], cfg["d_in"]) == (512, 16, 256) and t["encoder.weight"].shape == (512, 256)
    sparsify = topk_relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"], cfg["k"])
    np.testing.assert_allclose(sparsify, ours, rtol=1e-5, atol=1e-6)

    export_sae(random_sae, tmp_path / "sl", "saelens")
    cfg, t = json.loads((tmp_path / "sl" / "cfg.json").read_text()), load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert (cfg["architecture"], cfg["d_sae"], cfg["k"]) == ("topk", 512, 16) and t["W_enc"].shape == (256, 512)
    saelens = topk_relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], cfg["k"])
    np.testing.assert_allclose(saelens, ours, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saelens @ t["W_dec"] + t["b_dec"], random_sae.decode(codes), rtol=1e-4, atol=1e-5)


def test_bad_directories_are_clear_errors(tmp_path: Path, random_sae: SAE) -> None:
    with pytest.raises(InvalidInputError, match="no sae.safetensors"):
        import_sae(tmp_path)
    export_sae(random_sae, tmp_path / "nok", "saelens")
    cfg = json.loads((tmp_path / "nok" / "cfg.json").read_text())
    (tmp_path / "nok" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "standard"}))
    with pytest.raises(InvalidInputError, match="architecture must be 'topk'"):
        import_sae(tmp_path / "nok")
    (tmp_path / "nok" / "cfg.json").write_text("{broken")
    with pytest.raises(InvalidInputError, match="unreadable"):
        import_sae(tmp_path / "nok")


def test_cli_export_then_import_publishes_an_identical_model(loaded: Backend, random_sae: SAE, db_url: str, tmp_path: Path) -> None:
    model_id = publish_model(loaded, random_sae, "original")
    loaded.close()
    runner = CliRunner()
    exported = runner.invoke(app, ["export", str(model_id), str(tmp_path / "out"), "--format", "saelens", "--db", db_url])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(app, ["import", str(tmp_path / "out"), "--name", "copy", "--db", db_url])
    assert imported.exit_code == 0, imported.output
    by_name = runner.invoke(app, ["export", "original", str(tmp_path / "by-name"), "--db", db_url])  # README: names work too
    assert by_name.exit_code == 0 and (tmp_path / "by-name" / "sae.safetensors").is_file(), by_name.output
    (tmp_path / "a-file").write_text("")
    bad_path = runner.invoke(app, ["export", str(model_id), str(tmp_path / "a-file" / "out"), "--db", db_url])
    assert bad_path.exit_code == 2 and "cannot write" in bad_path.output and "Traceback" not in bad_path.output, bad_path.output
    unknown = runner.invoke(app, ["export", "no-such-model", str(tmp_path / "x"), "--db", db_url])
    assert unknown.exit_code == 2 and "no published model named 'no-such-model'" in unknown.output
    from saedb.backends import connect

    with connect(db_url) as backend:
        copy_id = backend.query("SELECT sae_model_id('copy')")[0][0]
        same = backend.query(
            "SELECT count(*) FROM sae_codes a JOIN sae_codes b USING (doc_id, feature_id) WHERE a.model_id = ? AND b.model_id = ?",
            (model_id, copy_id),
        )[0][0]
        assert same == backend.query("SELECT count(*) FROM sae_codes WHERE model_id = ?", (model_id,))[0][0] > 0


@pytest.mark.parametrize("fmt, change, message", [
    ("sparsify", {"activation": "groupmax"}, "activation 'groupmax'"),
    ("sparsify", {"activation": "jumprelu"}, "activation 'jumprelu'"),
    ("saelens", {"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm"),
    ("saelens", {"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
    ("saelens", {"activation_fn": "relu6"}, "activation_fn 'relu6'"),
])
def test_import_refuses_what_it_does_not_implement(tmp_path: Path, random_sae: SAE, fmt: str, change: dict, message: str) -> None:
    folder = export_sae(random_sae, tmp_path / fmt, fmt)  # type: ignore[arg-type]
    cfg = json.loads((folder / "cfg.json").read_text()) | change
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidInputError, match=message):
        import_sae(folder)
    (folder / "cfg.json").write_text(json.dumps(cfg | ({"activation": "topk", "multi_topk": True} if fmt == "sparsify" else
                                                      {"activation_fn": "relu", "rescale_acts_by_decoder_norm": False,
                                                       "normalize_activations": "none"})))
    assert np.array_equal(import_sae(folder).w_dec, random_sae.w_dec)  # supported settings import (multi_topk: a training loss)


@pytest.mark.parametrize("fmt, key", [("sparsify", "d_in"), ("sparsify", "num_latents"), ("saelens", "d_in"), ("saelens", "d_sae")])
def test_import_refuses_a_cfg_whose_sizes_are_not_the_weights(tmp_path: Path, random_sae: SAE, fmt: str, key: str) -> None:
    """cfg.json and the weights of different SAEs in one folder imported silently, the cfg's sizes ignored."""
    folder = export_sae(random_sae, tmp_path / fmt, fmt)  # type: ignore[arg-type]
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(cfg | {key: cfg[key] * 2}))
    with pytest.raises(InvalidInputError, match=f"cfg.json says {key} {cfg[key] * 2}, but the weights have {cfg[key]}"):
        import_sae(folder)
    if key == "num_latents":  # sparsify writes 0 where the width came from expansion_factor
        (folder / "cfg.json").write_text(json.dumps(cfg | {key: 0}))
        assert np.array_equal(import_sae(folder).w_dec, random_sae.w_dec)
