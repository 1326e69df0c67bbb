"""Convert a SAEBench / dictionary_learning checkpoint directory (`ae.pt` + `config.json`) into an SAE-Lens SAE.

The converted SAE's `encode`/`decode` equal dictionary_learning's inference `encode`/`decode` on the *raw* state
dict (no decoder renormalisation, unlike `AutoEncoder.from_pretrained`'s default):

| dict_class               | SAE-Lens class | notes                                                             |
|--------------------------|----------------|-------------------------------------------------------------------|
| AutoEncoder              | StandardSAE    | `bias` is b_dec, subtracted from the input                        |
| AutoEncoderTopK          | TopKSAE        | per-token top-k (its default path); the learned threshold is unused |
| BatchTopKSAE             | JumpReLUSAE    | inference path `use_threshold=True`: one global threshold, broadcast |
| MatryoshkaBatchTopKSAE   | JumpReLUSAE    | same; all groups active                                           |
| GatedAutoEncoder         | GatedSAE       | no encoder bias; gate_bias → b_gate, mag_bias → b_mag              |
| JumpReluAutoEncoder      | JumpReLUSAE    | does not subtract b_dec from the input unless its config says so  |

`blocks.{layer}.hook_resid_post` is the TransformerLens name of the `resid_post_layer_{layer}` submodule (the output
of GPT-NeoX block `layer`).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from sae_lens import (
    SAE,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    SAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata
from sae_lens.util import dtype_to_str

from saelens_amort.errors import SaeAmortError

logger = logging.getLogger(__name__)

AE_FILENAME = "ae.pt"
CONFIG_FILENAME = "config.json"
_FILES = f"{AE_FILENAME} + {CONFIG_FILENAME}"

StateDict = dict[str, torch.Tensor]
Converted = tuple[type[SAE], SAEConfig, StateDict]
Converter = Callable[[StateDict, dict[str, Any], int, int], Converted]
"""(dictionary_learning state dict, trainer config, d_in, d_sae) → (SAE class, its config, SAE-Lens state dict)."""

_SUBMODULE_HOOKS = {
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "hook_attn_out",
}


def is_dictionary_learning_dir(path: str | Path) -> bool:
    """True when `path` is a directory holding both `ae.pt` and `config.json`."""
    p = Path(path)
    return p.is_dir() and (p / AE_FILENAME).is_file() and (p / CONFIG_FILENAME).is_file()


def _req(state: StateDict, dict_class: str, *keys: str) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in state]
    if missing:
        raise SaeAmortError(
            f"{AE_FILENAME} lacks {missing} expected for dict_class {dict_class} (has {sorted(state)}); "
            f"check that {CONFIG_FILENAME} belongs to this checkpoint"
        )
    return [state[k] for k in keys]


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous()


def _threshold_per_latent(state: StateDict, dict_class: str, d_sae: int) -> torch.Tensor:
    (threshold,) = _req(state, dict_class, "threshold")
    if threshold.numel() not in (1, d_sae):
        raise SaeAmortError(
            f"{AE_FILENAME} threshold has {threshold.numel()} entries but {CONFIG_FILENAME} says dict_size={d_sae}; "
            "check that the two files belong together"
        )
    if threshold.numel() == 1:
        return threshold.detach().reshape(()).expand(d_sae).clone()
    return _contig(threshold.reshape(d_sae))


def _int_k(state: StateDict, trainer: dict[str, Any], dict_class: str) -> int:
    k_state = int(state["k"].item()) if "k" in state else None
    k_cfg = trainer.get("k")
    k_cfg = int(k_cfg) if k_cfg is not None else None
    if k_state is not None and k_cfg is not None and k_state != k_cfg:
        raise SaeAmortError(
            f"{CONFIG_FILENAME} says k={k_cfg} but {AE_FILENAME} stores k={k_state}; fix the config's trainer.k"
        )
    k = k_state if k_state is not None else k_cfg
    if k is None or k < 1:
        raise SaeAmortError(f"{dict_class} checkpoint has no positive k (neither trainer.k nor a `k` buffer)")
    d_sae = int(trainer["dict_size"])
    if k > d_sae:
        raise SaeAmortError(f"{dict_class} checkpoint has k={k} but dict_size={d_sae}: k must be at most dict_size")
    return k


def _autoencoder(state: StateDict, trainer: dict[str, Any], d_in: int, d_sae: int) -> Converted:
    enc_w, enc_b, dec_w, bias = _req(state, "AutoEncoder", "encoder.weight", "encoder.bias", "decoder.weight", "bias")
    sd = {"W_enc": _contig(enc_w.T), "b_enc": _contig(enc_b), "W_dec": _contig(dec_w.T), "b_dec": _contig(bias)}
    return StandardSAE, StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True), sd


def _topk(state: StateDict, trainer: dict[str, Any], d_in: int, d_sae: int) -> Converted:
    enc_w, enc_b, dec_w, b_dec = _req(
        state, "AutoEncoderTopK", "encoder.weight", "encoder.bias", "decoder.weight", "b_dec"
    )
    k = _int_k(state, trainer, "AutoEncoderTopK")
    sd = {"W_enc": _contig(enc_w.T), "b_enc": _contig(enc_b), "W_dec": _contig(dec_w.T), "b_dec": _contig(b_dec)}
    return TopKSAE, TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=True), sd


def _batch_topk(state: StateDict, trainer: dict[str, Any], d_in: int, d_sae: int) -> Converted:
    enc_w, enc_b, dec_w, b_dec = _req(
        state, "BatchTopKSAE", "encoder.weight", "encoder.bias", "decoder.weight", "b_dec"
    )
    sd = {
        "W_enc": _contig(enc_w.T),
        "b_enc": _contig(enc_b),
        "W_dec": _contig(dec_w.T),
        "b_dec": _contig(b_dec),
        "threshold": _threshold_per_latent(state, "BatchTopKSAE", d_sae),
    }
    return JumpReLUSAE, JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True), sd


def _matryoshka(state: StateDict, trainer: dict[str, Any], d_in: int, d_sae: int) -> Converted:
    w_enc, b_enc, w_dec, b_dec = _req(state, "MatryoshkaBatchTopKSAE", "W_enc", "b_enc", "W_dec", "b_dec")
    sd = {
        "W_enc": _contig(w_enc),
        "b_enc": _contig(b_enc),
        "W_dec": _contig(w_dec),
        "b_dec": _contig(b_dec),
        "threshold": _threshold_per_latent(state, "MatryoshkaBatchTopKSAE", d_sae),
    }
    return JumpReLUSAE, JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True), sd


def _gated(state: StateDict, trainer: dict[str, Any], d_in: int, d_sae: int) -> Converted:
    enc_w, dec_w, dec_b, r_mag, gate_b, mag_b = _req(
        state, "GatedAutoEncoder", "encoder.weight", "decoder.weight", "decoder_bias", "r_mag", "gate_bias", "mag_bias"
    )
    sd = {
        "W_enc": _contig(enc_w.T),
        "W_dec": _contig(dec_w.T),
        "b_dec": _contig(dec_b),
        "b_gate": _contig(gate_b),
        "b_mag": _contig(mag_b),
        "r_mag": _contig(r_mag),
    }
    return GatedSAE, GatedSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True), sd


def _jumprelu(state: StateDict, trainer: dict[str, Any], d_in: int, d_sae: int) -> Converted:
    w_enc, b_enc, w_dec, b_dec = _req(state, "JumpReluAutoEncoder", "W_enc", "b_enc", "W_dec", "b_dec")
    flag = state.get("apply_b_dec_to_input", trainer.get("apply_b_dec_to_input", False))
    apply_b_dec = bool(flag.item() if isinstance(flag, torch.Tensor) else flag)
    sd = {
        "W_enc": _contig(w_enc),
        "b_enc": _contig(b_enc),
        "W_dec": _contig(w_dec),
        "b_dec": _contig(b_dec),
        "threshold": _threshold_per_latent(state, "JumpReluAutoEncoder", d_sae),
    }
    return JumpReLUSAE, JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=apply_b_dec), sd


CONVERTERS: dict[str, Converter] = {
    "AutoEncoder": _autoencoder,
    "AutoEncoderTopK": _topk,
    "BatchTopKSAE": _batch_topk,
    "MatryoshkaBatchTopKSAE": _matryoshka,
    "GatedAutoEncoder": _gated,
    "JumpReluAutoEncoder": _jumprelu,
}
"""dictionary_learning `dict_class` name → converter."""


def read_dictionary_learning_config(path: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a dictionary_learning directory (keys `trainer` and usually `buffer`)."""
    cfg_path = Path(path) / CONFIG_FILENAME
    if not cfg_path.is_file():
        raise SaeAmortError(f"{cfg_path} not found; a dictionary_learning SAE directory needs {_FILES}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise SaeAmortError(f"{cfg_path} is not valid JSON ({e}); re-download or rewrite it") from e
    if not isinstance(cfg, dict) or not isinstance(cfg.get("trainer"), dict):
        raise SaeAmortError(
            f"{cfg_path} has no 'trainer' section; expected dictionary_learning's "
            "{'trainer': {...}, 'buffer': {...}}"
        )
    trainer = cfg["trainer"]
    missing = [k for k in ("dict_class", "activation_dim", "dict_size") if k not in trainer]
    if missing:
        raise SaeAmortError(f"{cfg_path} trainer section lacks {missing}; is this a dictionary_learning config?")
    return cfg


def _read_state(path: Path, weights: Path | None = None) -> StateDict:
    ae_path = weights if weights is not None else path / AE_FILENAME
    if not ae_path.is_file():
        raise SaeAmortError(f"{ae_path} not found; a dictionary_learning SAE directory needs {_FILES}")
    try:
        state = torch.load(ae_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user to replace
        raise SaeAmortError(
            f"cannot read {ae_path} as a tensor state dict ({type(e).__name__}: {e}); "
            "re-save it with torch.save(ae.state_dict())"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SaeAmortError(f"{ae_path} is not a state dict of tensors; re-save it with torch.save(ae.state_dict())")
    return state


def hook_name_for(trainer: dict[str, Any]) -> str:
    """TransformerLens hook of a dictionary_learning submodule (`resid_post_layer_8` → `blocks.8.hook_resid_post`)."""
    layer = trainer.get("layer")
    sub = trainer.get("submodule_name")
    match = re.fullmatch(r"(resid_post|mlp_out|attn_out)_layer_(\d+)", sub) if isinstance(sub, str) else None
    if match:
        kind, sub_layer = match.group(1), int(match.group(2))
        if layer is not None and int(layer) != sub_layer:
            warnings.warn(f"config layer={layer} but submodule_name={sub!r}; using layer {sub_layer}", stacklevel=3)
        return f"blocks.{sub_layer}.{_SUBMODULE_HOOKS[kind]}"
    if layer is None:
        raise SaeAmortError(
            f"{CONFIG_FILENAME} trainer section has neither 'layer' nor a known 'submodule_name'; add trainer.layer"
        )
    if sub is not None:
        warnings.warn(f"unrecognised submodule_name {sub!r}; assuming blocks.{layer}.hook_resid_post", stacklevel=3)
    return f"blocks.{int(layer)}.hook_resid_post"


def _metadata(cfg: dict[str, Any], state: StateDict) -> SAEMetadata:
    trainer = cfg["trainer"]
    buffer = cfg.get("buffer") or {}
    lm_name = trainer.get("lm_name")
    meta: dict[str, Any] = {
        "hook_name": hook_name_for(trainer),
        "model_name": lm_name.split("/")[-1] if isinstance(lm_name, str) else None,
        "dictionary_learning_submodule_name": trainer.get("submodule_name"),
        "context_size": buffer.get("ctx_len"),
        "prepend_bos": True,
        "dictionary_learning_dict_class": trainer["dict_class"],
        "dictionary_learning_trainer_class": trainer.get("trainer_class"),
    }
    if "group_sizes" in state:
        meta["matryoshka_group_sizes"] = [int(g) for g in state["group_sizes"].tolist()]
    return SAEMetadata(**meta)


def load_dictionary_learning_sae(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, *, weights: str | Path | None = None
) -> SAE:
    """Load a dictionary_learning directory as the matching SAE-Lens inference SAE (see the module table).

    `weights` replaces the directory's `ae.pt` (e.g. an intermediate `checkpoints/ae_<step>.pt` of that run).
    `dtype=None` keeps the checkpoint's floating dtype.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise SaeAmortError(f"{p} is not a directory; pass the folder holding {AE_FILENAME} and {CONFIG_FILENAME}")
    cfg = read_dictionary_learning_config(p)
    state = _read_state(p, None if weights is None else Path(weights).expanduser())
    trainer = cfg["trainer"]
    dict_class = trainer["dict_class"]
    converter = CONVERTERS.get(dict_class)
    if converter is None:
        raise SaeAmortError(
            f"unsupported dictionary_learning dict_class {dict_class!r}; supported: {sorted(CONVERTERS)}"
        )
    d_in, d_sae = int(trainer["activation_dim"]), int(trainer["dict_size"])
    sae_cls, sae_cfg, sd = converter(state, trainer, d_in, d_sae)
    if sd["W_enc"].shape != (d_in, d_sae) or sd["W_dec"].shape != (d_sae, d_in):
        raise SaeAmortError(
            f"{AE_FILENAME} weights have shape W_enc {tuple(sd['W_enc'].shape)} but {CONFIG_FILENAME} says "
            f"activation_dim={d_in}, dict_size={d_sae}; check that the two files belong together"
        )
    torch_dtype = dtype if dtype is not None else sd["W_enc"].dtype
    sd = {k: v.to(torch_dtype) for k, v in sd.items()}
    sae_cfg.dtype = dtype_to_str(torch_dtype)
    sae_cfg.metadata = _metadata(cfg, state)
    # Build on the meta device (no random init), then assign the converted tensors, as SAE-Lens' loaders do.
    sae_cfg.device = "meta"
    sae = sae_cls(sae_cfg)
    sae.cfg.device = device
    sae.process_state_dict_for_loading(sd)
    try:
        sae.load_state_dict(sd, assign=True, strict=True)
    except RuntimeError as e:  # a bias or threshold whose size disagrees with the weights
        detail = " ".join(str(e).split())[:300]
        raise SaeAmortError(f"{p / AE_FILENAME} does not fit its {CONFIG_FILENAME} ({detail}); check that the two "
                            "files belong together") from None
    sae = sae.to(device=device, dtype=torch_dtype)
    logger.info("loaded %s (%s) from %s as %s", dict_class, trainer.get("trainer_class"), p, sae_cls.__name__)
    return sae
