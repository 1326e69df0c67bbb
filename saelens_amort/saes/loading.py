"""Load an SAE from one spec string, and check that it fits a model.

Spec forms, tried in this order:

- `toy/<family>`: the SAE shipped with the embedded toy world (SAE-Lens disk format).
- `world/<family>-x<width>`: an SAE shipped for the small ground-truth world (`saelens_amort.world.saes`).
- an existing local directory: SAE-Lens format (`cfg.json` + `sae_weights.safetensors`) or dictionary_learning
  format (`ae.pt` + `config.json`, converted by `saes.dictionary_learning`).
- `saebench:[WIDTH/]FAMILY/trainer_I`: a SAEBench pythia-160m-deduped layer-8 SAE (`saes.suites`), fetched into the
  Hugging Face cache and converted like any dictionary_learning directory.
- `release/sae_id`: an SAE-Lens pretrained release, split on the first "/" (sae_ids may contain slashes).
"""

from __future__ import annotations

import difflib
import logging
import warnings
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME

from saelens_amort.errors import SaeAmortError
from saelens_amort.saes import suites
from saelens_amort.saes.dictionary_learning import (
    AE_FILENAME,
    CONFIG_FILENAME,
    is_dictionary_learning_dir,
    load_dictionary_learning_sae,
)
from saelens_amort.saes.hub import is_offline, network_errors
from saelens_amort.saes.releases import get_release
from saelens_amort.saes.sae_lens_dir import load_sae_lens_dir
from saelens_amort.saes.suites import TOY_SAE_FAMILIES

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

TOY_PREFIX = "toy/"
WORLD_PREFIX = "world/"
OFFLINE_HINT = (
    "use a local SAE directory (--sae-path), populate the Hugging Face cache on a machine with network "
    "(then HF_HUB_OFFLINE=1 works), or use the toy SAEs (--model toy)"
)


def _cast(sae: SAE, dtype: torch.dtype | None) -> SAE:
    return sae if dtype is None else sae.to(dtype=dtype)


def _toy_dir(family: str) -> Path:
    from saelens_amort.toy.paths import SAES_DIR

    return SAES_DIR / family


def _load_toy(family: str, device: str, dtype: torch.dtype | None) -> SAE:
    if family not in TOY_SAE_FAMILIES:
        raise SaeAmortError(f"unknown toy SAE family {family!r}; choose one of {', '.join(TOY_SAE_FAMILIES)}")
    path = _toy_dir(family)
    if not (path / SAE_CFG_FILENAME).is_file() or not (path / SAE_WEIGHTS_FILENAME).is_file():
        raise SaeAmortError(f"toy SAE {family!r} is not built ({path} missing); run `saeamort toy build` first")
    return load_sae_lens_dir(path, device, dtype)


def _load_local(path: Path, device: str, dtype: torch.dtype | None) -> SAE:
    if path.is_file():
        # dictionary_learning's intermediate checkpoints: <run>/checkpoints/ae_<step>.pt next to <run>/config.json
        run_dir = next((d for d in (path.parent, path.parent.parent) if (d / CONFIG_FILENAME).is_file()), None)
        if path.suffix == ".pt" and run_dir is not None:
            return load_dictionary_learning_sae(run_dir, device=device, dtype=dtype, weights=path)
        raise SaeAmortError(f"{path} is a file; pass the directory that holds it (or a dictionary_learning "
                            f"ae_<step>.pt with {CONFIG_FILENAME} in its folder or the one above)")
    if (path / SAE_CFG_FILENAME).is_file() and (path / SAE_WEIGHTS_FILENAME).is_file():
        return load_sae_lens_dir(path, device, dtype)
    if is_dictionary_learning_dir(path):
        return load_dictionary_learning_sae(path, device=device, dtype=dtype)
    present = sorted(p.name for p in path.iterdir())[:10]
    raise SaeAmortError(
        f"{path} is not an SAE directory: expected SAE-Lens files {SAE_CFG_FILENAME} + {SAE_WEIGHTS_FILENAME} or "
        f"dictionary_learning files {AE_FILENAME} + {CONFIG_FILENAME} (found {present})"
    )


def _load_pretrained(release: str, sae_id: str, device: str, dtype: torch.dtype | None) -> SAE:
    valid_ids = list(get_release(release).saes_map)
    if sae_id not in valid_ids:
        close = difflib.get_close_matches(sae_id, valid_ids, n=5) or valid_ids[:5]
        raise SaeAmortError(
            f"SAE id {sae_id!r} is not in release {release!r} ({len(valid_ids)} ids); e.g. {close}"
        )
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except network_errors() as e:
        state = "offline (HF_HUB_OFFLINE=1)" if is_offline() else "unreachable"
        raise SaeAmortError(
            f"SAE {release}/{sae_id} is not in the local Hugging Face cache and the hub is {state}; {OFFLINE_HINT}"
        ) from e
    return _cast(sae, dtype)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~", ".\\")) or spec in (".", "..")


def load_sae(spec: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """Load an SAE-Lens SAE from `toy/<family>`, a local directory, or `release/sae_id` (see the module docstring).

    `dtype` casts the loaded SAE; None keeps the stored dtype.
    """
    if isinstance(spec, Path):
        path = spec.expanduser()
        if not path.exists():
            raise SaeAmortError(f"SAE directory {path} does not exist; check the path")
        return _load_local(path, device, dtype)
    spec = spec.strip()
    if spec.startswith(TOY_PREFIX):
        return _load_toy(spec[len(TOY_PREFIX):], device, dtype)
    if spec.startswith(WORLD_PREFIX):
        from saelens_amort.world.saes import shipped_sae_dirs

        shipped = shipped_sae_dirs()
        if spec not in shipped and not Path(spec).exists():
            raise SaeAmortError(f"no shipped world SAE {spec!r}; shipped: {', '.join(shipped) or 'none'} (train others "
                                "with saeamort world train and pass their folder with --sae-path)")
        if spec in shipped:
            return _load_local(shipped[spec], device, dtype)
    if spec.startswith(suites.PREFIX):
        return _load_local(suites.fetch(spec), device, dtype)
    path = Path(spec).expanduser()
    if spec and path.exists():
        return _load_local(path, device, dtype)
    if _looks_like_path(spec):
        raise SaeAmortError(f"SAE directory {path} does not exist; check the path")
    release, sep, sae_id = spec.partition("/")
    if sep and release and sae_id:
        return _load_pretrained(release, sae_id, device, dtype)
    raise SaeAmortError(
        f"cannot interpret SAE spec {spec!r}; use toy/<family> ({', '.join(TOY_SAE_FAMILIES)}), "
        "world/<family>-x<width>, an SAE directory, saebench:FAMILY/trainer_I, or an SAE-Lens release/sae_id"
    )


def model_kwargs_for(saes: Iterable[SAE]) -> dict[str, Any]:
    """The TransformerLens from_pretrained options the SAEs were trained with (`metadata.model_from_pretrained_kwargs`,
    e.g. gpt2-small-res-jb's center_writing_weights=True; none = SAE-Lens' unprocessed model); SAEs that disagree
    cannot read one model."""
    found = [dict(sae.cfg.metadata.get("model_from_pretrained_kwargs") or {}) for sae in saes]
    for kwargs in found[1:]:
        if kwargs != found[0]:
            raise SaeAmortError(f"the SAEs were trained on differently loaded models (model_from_pretrained_kwargs "
                                f"{found[0]} vs {kwargs}); sweep them separately")
    return found[0] if found else {}


def _similar_hooks(hook: str, valid: list[str], n: int = 5) -> list[str]:
    close = difflib.get_close_matches(hook, valid, n=n, cutoff=0.5)
    return close or [h for h in valid if h.endswith("hook_resid_post")][:n] or valid[:n]


def _expected_width(model: "HookedTransformer", hook: str, sae: SAE) -> tuple[int, str]:
    cfg = model.cfg
    if hook.endswith(("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")) and cfg.d_mlp is not None:
        return int(cfg.d_mlp), "d_mlp"
    if hook.endswith("hook_z") and sae.cfg.reshape_activations == "hook_z":
        return int(cfg.n_heads * cfg.d_head), "n_heads*d_head"
    return int(cfg.d_model), "d_model"


def check_sae_fits(
    sae: SAE, model: "HookedTransformer", hook_name: str | None = None, *, strict_hook: bool = False
) -> str:
    """Check that `sae` can read `model` at `hook_name`; return the hook name to use.

    The effective hook is `hook_name` when given, else the SAE's own `metadata.hook_name`. A requested hook that
    differs from the SAE's warns (raises with `strict_hook=True`): an SAE read at the wrong site gives meaningless
    codes.
    """
    sae_hook = sae.cfg.metadata.get("hook_name")
    hook = hook_name or sae_hook
    if not hook:
        raise SaeAmortError(
            "the SAE records no metadata.hook_name; pass the hook explicitly, e.g. blocks.8.hook_resid_post"
        )
    valid = list(model.hook_dict)
    if hook not in model.hook_dict:
        raise SaeAmortError(f"hook {hook!r} is not in the model; similar valid hooks: {_similar_hooks(hook, valid)}")
    if hook_name and sae_hook and hook_name != sae_hook:
        msg = f"requested hook {hook_name!r} differs from the SAE's own hook {sae_hook!r}"
        if strict_hook:
            raise SaeAmortError(f"{msg}; pass hook {sae_hook!r} or drop the strict hook check")
        warnings.warn(f"{msg}; using {hook_name!r}", UserWarning, stacklevel=2)
    width, what = _expected_width(model, hook, sae)
    if sae.cfg.d_in != width:
        raise SaeAmortError(
            f"SAE d_in={sae.cfg.d_in} does not match the model's {what}={width} at {hook}; "
            "use an SAE trained on this model"
        )
    return hook
