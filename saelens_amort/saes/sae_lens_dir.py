"""Load an SAE-Lens disk directory (`cfg.json` + `sae_weights.safetensors`), checking it first.

SAE-Lens trusts its files: a `cfg.json` that is not JSON, a `d_in` that disagrees with the weights or a truncated
safetensors file surface as a JSONDecodeError, a state-dict RuntimeError or a SafetensorError deep in its loader.
Here the config is parsed and its sizes checked, the weights' header is read (shapes only, no tensor data) and the
encoder and decoder shapes are compared with the config, so each of those is one error naming the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE, TrainingSAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from safetensors import SafetensorError, safe_open

from saelens_amort.errors import SaeAmortError

SIZES = ("d_in", "d_sae")


def read_sae_lens_cfg(path: Path) -> dict[str, Any]:
    """The parsed `cfg.json` of an SAE-Lens directory: a JSON object with an architecture and positive sizes."""
    cfg_path = path / SAE_CFG_FILENAME
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaeAmortError(f"{cfg_path} is not valid JSON ({e}); re-save the SAE with sae.save_model()") from None
    if not isinstance(cfg, dict):
        raise SaeAmortError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not an object of SAE config fields")
    if not isinstance(cfg.get("architecture"), str):
        raise SaeAmortError(f"{cfg_path} names no 'architecture' (e.g. \"standard\", \"topk\", \"jumprelu\")")
    for key in SIZES:
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SaeAmortError(f"{cfg_path}: {key} must be a positive integer, got {value!r}")
    k = cfg.get("k")
    if "k" in cfg and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg["d_sae"]):
        raise SaeAmortError(f"{cfg_path}: k must be an integer in [1, d_sae={cfg['d_sae']}], got {k!r}")
    if "k" not in cfg and "k" in _config_fields(cfg["architecture"]):
        # SAE-Lens would fill in its default k (100) without a word: the SAE would run at a sparsity it never had
        raise SaeAmortError(f"{cfg_path} has no 'k' for its {cfg['architecture']!r} SAE; add the k it was trained with")
    return cfg


def _config_fields(architecture: str) -> set[str]:
    """Field names of the SAE-Lens config class of `architecture` (inference or training registry; empty if none)."""
    from dataclasses import fields

    entry = SAE_CLASS_REGISTRY.get(architecture) or SAE_TRAINING_CLASS_REGISTRY.get(architecture)
    return set() if entry is None else {f.name for f in fields(entry[1])}


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from the safetensors header, without reading the tensors."""
    weights_path = path / SAE_WEIGHTS_FILENAME
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as e:
        raise SaeAmortError(f"{weights_path} is truncated or not a safetensors file ({e}); "
                            "re-download or re-save it") from None


def check_shapes(path: Path, cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """The encoder and decoder in the weights must be [d_in, d_sae] and [d_sae, d_in] as the config says."""
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in)}
    for name, shape in expected.items():
        if name in shapes and shapes[name] != shape:
            raise SaeAmortError(
                f"{path / SAE_WEIGHTS_FILENAME} has {name} of shape {list(shapes[name])} but {SAE_CFG_FILENAME} says "
                f"d_in={d_in}, d_sae={d_sae} (expected {list(shape)}); check that the two files belong together"
            )


def load_sae_lens_dir(path: Path, device: str, dtype: torch.dtype | None) -> SAE:
    """An SAE-Lens directory as its SAE, cast to `dtype` (None keeps the stored dtype). A training-only architecture
    (SAE-Lens' trainer checkpoints of BatchTopK and Matryoshka SAEs, as `saeamort train --checkpoint-every` writes
    them) is loaded as its training SAE and converted to its inference form by SAE-Lens' own `save_inference_model`
    (BatchTopK → JumpReLU with the learned threshold)."""
    cfg = read_sae_lens_cfg(path)
    check_shapes(path, cfg, weight_shapes(path))
    arch = cfg["architecture"]
    if arch not in SAE_CLASS_REGISTRY and arch not in SAE_TRAINING_CLASS_REGISTRY:
        raise SaeAmortError(
            f"{path / SAE_CFG_FILENAME} names architecture {arch!r} that SAE-Lens does not know; import the package "
            "that registers it (register_sae_class) before loading"
        )
    try:
        sae = SAE.load_from_disk(path, device=device) if arch in SAE_CLASS_REGISTRY else _inference_form(path, device)
    except KeyError as e:
        raise SaeAmortError(f"{path / SAE_CFG_FILENAME} lacks {e}, which SAE-Lens needs for a {arch!r} SAE; re-save "
                            "the SAE with sae.save_model()") from None
    except (TypeError, ValueError, RuntimeError) as e:  # config fields or state-dict keys that do not fit
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise SaeAmortError(f"{path} does not load as an SAE-Lens {arch!r} SAE ({detail}); "
                            f"check {SAE_CFG_FILENAME} against {SAE_WEIGHTS_FILENAME}") from None
    return sae if dtype is None else sae.to(dtype=dtype)


def _inference_form(path: Path, device: str) -> SAE:
    """A training-format directory through SAE-Lens' TrainingSAE and its `save_inference_model`, reloaded."""
    import tempfile

    training = TrainingSAE.load_from_disk(path, device=device)
    with tempfile.TemporaryDirectory(prefix="saeamort-inference-") as tmp:
        training.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=device)
