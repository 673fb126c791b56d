"""Import and export SAEs in the sparsify and SAELens on-disk formats.

sparsify (EleutherAI):  cfg.json + sae.safetensors
    encoder.weight (n, d), encoder.bias (n,), W_dec (n, d), b_dec (d,)
    encode = TopK(ReLU(encoder(x - b_dec))), decode = acts @ W_dec + b_dec
SAELens (top-k architecture):  cfg.json + sae_weights.safetensors
    W_enc (d, n), b_enc (n,), W_dec (n, d), b_dec (d,)
    encode = TopK(ReLU((x - b_dec) @ W_enc + b_enc)), decode = acts @ W_dec + b_dec

Both equal saedb's ReLU(TopK(w_enc (x - b_pre) + b_lat)) with b_pre = b_dec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.numpy import load_file, save_file

from saedb.errors import InvalidInputError
from saedb.sae import SAE

Format = Literal["sparsify", "saelens"]
WEIGHT_FILES: dict[str, str] = {"sparsify": "sae.safetensors", "saelens": "sae_weights.safetensors"}


def export_sae(sae: SAE, directory: str | Path, fmt: Format) -> Path:
    """Write ``sae`` to ``directory`` in the given format; returns the directory. A folder that
    cannot be written is an InvalidInputError naming it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(sae, directory, fmt)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {directory}: {exc.strerror or exc}") from None
    return directory


def _write(sae: SAE, directory: Path, fmt: Format) -> None:
    if fmt == "sparsify":
        cfg = {
            "expansion_factor": sae.n_latents // sae.d,
            "normalize_decoder": True,
            "num_latents": sae.n_latents,
            "k": sae.k,
            "multi_topk": False,
            "d_in": sae.d,
        }
        tensors = {"encoder.weight": sae.w_enc, "encoder.bias": sae.b_lat, "W_dec": sae.w_dec, "b_dec": sae.b_pre}
    elif fmt == "saelens":
        cfg = {
            "architecture": "topk",
            "d_in": sae.d,
            "d_sae": sae.n_latents,
            "k": sae.k,
            "dtype": "float32",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "metadata": {"model_name": "saedb"},
        }
        tensors = {"W_enc": np.ascontiguousarray(sae.w_enc.T), "b_enc": sae.b_lat, "W_dec": sae.w_dec, "b_dec": sae.b_pre}
    else:
        raise InvalidInputError(f"unknown format {fmt!r}: use sparsify or saelens")
    (directory / "cfg.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(directory / WEIGHT_FILES[fmt]))


def detect_format(directory: Path) -> Format:
    for fmt, weights in WEIGHT_FILES.items():
        if (directory / weights).is_file():
            return fmt  # type: ignore[return-value]
    raise InvalidInputError(f"{directory}: no sae.safetensors (sparsify) or sae_weights.safetensors (SAELens) found")


def unsupported_settings(cfg: dict, fmt: Format) -> list[str]:
    """Settings of the file that change the codes and that saedb does not implement."""
    found = []
    if fmt == "sparsify":
        if cfg.get("activation", "topk") != "topk":
            found.append(f"activation {cfg['activation']!r}")
    else:
        for key in ("activation_fn", "activation_fn_str"):
            if cfg.get(key, "relu") not in ("relu", "topk"):
                found.append(f"{key} {cfg[key]!r}")
        if cfg.get("rescale_acts_by_decoder_norm"):
            found.append("rescale_acts_by_decoder_norm")
        if cfg.get("normalize_activations", "none") not in ("none", None):
            found.append(f"normalize_activations {cfg['normalize_activations']!r}")
    return found


def import_sae(directory: str | Path) -> SAE:
    """Read a sparsify or SAELens SAE directory (the format is detected from its files)."""
    directory = Path(directory)
    fmt = detect_format(directory)
    try:
        cfg = json.loads((directory / "cfg.json").read_text())
        tensors = load_file(str(directory / WEIGHT_FILES[fmt]))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{directory}: unreadable {fmt} SAE: {exc}") from None
    if "k" not in cfg:
        raise InvalidInputError(f"{directory}: cfg.json has no 'k' (only top-k SAEs are supported)")
    if fmt == "saelens" and (cfg.get("architecture") != "topk" or not cfg.get("apply_b_dec_to_input", True)):
        raise InvalidInputError(f"{directory}: SAELens architecture must be 'topk' with apply_b_dec_to_input")
    unsupported = unsupported_settings(cfg, fmt)
    if unsupported:
        raise InvalidInputError(f"{directory}: saedb encodes ReLU(TopK(W_enc(x - b_dec) + b_enc)) only; this SAE uses "
                                f"{', '.join(unsupported)}, which would give other codes")
    names = ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if fmt == "sparsify" else ("W_enc", "b_enc", "W_dec", "b_dec")
    missing = [name for name in names if name not in tensors]
    if missing:
        raise InvalidInputError(f"{directory}: {WEIGHT_FILES[fmt]} lacks {', '.join(missing)}")
    w_enc, b_lat, w_dec, b_pre = (tensors[name] for name in names)
    if fmt == "saelens":
        w_enc = w_enc.T
    width = "num_latents" if fmt == "sparsify" else "d_sae"
    for key, actual in (("d_in", w_dec.shape[-1]), (width, w_dec.shape[0])):
        declared = cfg.get(key)
        if declared and declared != actual:  # sparsify writes num_latents 0 when expansion_factor set the width
            raise InvalidInputError(f"{directory}: cfg.json says {key} {declared}, but the weights have {actual}: "
                                    "are they of another SAE?")
    return SAE(w_enc=w_enc, b_lat=b_lat, w_dec=w_dec, b_pre=b_pre, k=int(cfg["k"]))
