"""Load a TransformerLens model from an official name, a local HF checkpoint directory, or the embedded toy.

Weights are loaded *without* TransformerLens' weight processing (no LayerNorm folding, no centering), so
`blocks.{L}.hook_resid_post` equals the HF model's `hidden_states[L + 1]`: the activations SAEBench /
dictionary_learning SAEs were trained on. Pass `processing=True` for SAEs trained on a processed model
(several SAE-Lens releases record this in `metadata.model_from_pretrained_kwargs`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformer_lens import HookedTransformer
from transformer_lens import loading_from_pretrained as tl_loading

from saelens_amort.errors import SaeAmortError

logger = logging.getLogger(__name__)

TOY_MODEL_NAME = "toy"

_NO_PROCESSING = dict(
    fold_ln=False,
    center_writing_weights=False,
    center_unembed=False,
    refactor_factored_attn_matrices=False,
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def is_offline() -> bool:
    """True when the user asked Hugging Face libraries not to touch the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def offline_hint(what: str) -> str:
    return (
        f"{what} is not in the local Hugging Face cache and cannot be downloaded. Use a local checkpoint directory, "
        "run once with network to fill the cache (then HF_HUB_OFFLINE=1 works), or use the embedded toy world "
        "(--model toy)."
    )


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise SaeAmortError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def load_model(
    name_or_path: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    processing: bool = False,
    **from_pretrained_kwargs: Any,
) -> HookedTransformer:
    """A HookedTransformer for `toy`, a local HF checkpoint directory, or a TransformerLens official name.

    `processing=False` (default) keeps the raw residual stream (see the module docstring). `from_pretrained_kwargs`
    go to TransformerLens' from_pretrained; for a local checkpoint its weight-processing flags (fold_ln,
    center_writing_weights, center_unembed, refactor_factored_attn_matrices) apply and the rest are ignored.
    """
    torch_dtype = _resolve_dtype(dtype)
    name = str(name_or_path)
    if name == TOY_MODEL_NAME:
        from saelens_amort.toy.model import load_toy_model

        return load_toy_model(device=device, dtype=torch_dtype)
    path = Path(name).expanduser()
    if path.exists():
        return _load_local_hf(path, device=device, dtype=torch_dtype, processing=processing, **from_pretrained_kwargs)
    return _load_official(name, device=device, dtype=torch_dtype, processing=processing, **from_pretrained_kwargs)


def _is_official(name: str) -> bool:
    try:
        tl_loading.get_official_model_name(name)
    except ValueError:
        return False
    return True


def _load_official(
    name: str, *, device: str, dtype: torch.dtype, processing: bool, **kwargs: Any
) -> HookedTransformer:
    if not _is_official(name):
        raise SaeAmortError(
            f"unknown model {name!r}: not a TransformerLens official name (e.g. pythia-160m-deduped, gpt2), "
            "not an existing local checkpoint directory, and not 'toy'"
        )
    load = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
    try:
        return load(name, device=device, dtype=dtype, **kwargs)
    except OSError as err:  # huggingface_hub raises OSError subclasses when offline / not cached
        raise SaeAmortError(offline_hint(f"model {name!r}") + f" ({type(err).__name__})") from err
    except Exception as err:
        if "offline" in str(err).lower() or "connect" in str(err).lower():
            raise SaeAmortError(offline_hint(f"model {name!r}")) from err
        raise


def _check_hf_config(config_path: Path) -> None:
    """The fields TransformerLens converts a checkpoint by: a JSON object with `model_type` and `architectures`."""
    if not config_path.is_file():
        raise SaeAmortError(f"{config_path.parent} is not a Hugging Face checkpoint directory (no config.json)")
    try:
        cfg = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SaeAmortError(f"{config_path} is not valid JSON ({err}); re-save it with save_pretrained()") from None
    if not isinstance(cfg, dict):
        raise SaeAmortError(f"{config_path} holds a JSON {type(cfg).__name__}, not an object of config fields")
    archs = cfg.get("architectures")
    if not isinstance(cfg.get("model_type"), str) or not (isinstance(archs, list) and archs
                                                           and all(isinstance(a, str) for a in archs)):
        raise SaeAmortError(
            f"{config_path} is incomplete: it needs 'model_type' (e.g. \"gpt_neox\") and 'architectures' (e.g. "
            "[\"GPTNeoXForCausalLM\"]), as model.save_pretrained() writes them"
        )


def _load_local_hf(path: Path, *, device: str, dtype: torch.dtype, processing: bool, **kwargs: Any
                   ) -> HookedTransformer:
    """The offline path: TL config from the directory's config.json, weights converted from the HF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_hf_config(path / "config.json")
    path = path.resolve()
    fold = dict(_NO_PROCESSING)
    if processing:
        fold = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, refactor_factored_attn_matrices=False)
    fold.update({key: bool(value) for key, value in kwargs.items() if key in fold})
    ignored = sorted(set(kwargs) - set(fold))
    if ignored:
        logger.warning("from_pretrained options %s do not apply to a local checkpoint; ignored", ignored)
    try:
        cfg = tl_loading.get_pretrained_model_config(str(path), fold_ln=fold["fold_ln"], device=device, dtype=dtype)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError, KeyError, NotImplementedError, StrictDataclassError) as err:
        raise SaeAmortError(f"cannot load the checkpoint in {path}: {' '.join(str(err).split())[:300]}") from err
    except AttributeError as err:  # TransformerLens reads a field the config does not have
        raise SaeAmortError(f"{path / 'config.json'} lacks a field TransformerLens needs to convert it ({err}); "
                            "add it as in the model's published config.json") from err
    state_dict = tl_loading.get_pretrained_state_dict(str(path), cfg, hf_model, dtype=dtype)
    del hf_model
    tokenizer = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    else:
        cfg.tokenizer_name = None
        logger.warning("%s has no tokenizer files; the model takes token ids only", path)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **fold)
    model.move_model_modules_to_device()
    model.eval()
    return model
