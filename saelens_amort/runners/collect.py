"""Runner for `saeamort collect`: load the model, check the hook, stream activations into a shard store."""

from __future__ import annotations

from pathlib import Path

from saelens_amort.activations import ActivationStore, CollectConfig, collect_activations, resolve_source
from saelens_amort.devices import check_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.models import load_model


def resolve_hook(n_layers: int, layer: int | None, hook: str | None) -> str:
    """`--hook` wins; otherwise `blocks.{layer}.hook_resid_post`, with the layer checked against the model."""
    if hook:
        return hook
    if layer is None:
        raise SaeAmortError("give --layer L (for blocks.L.hook_resid_post) or --hook NAME")
    if not 0 <= layer < n_layers:
        raise SaeAmortError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    return f"blocks.{layer}.hook_resid_post"


def run_collect(
    model_name: str,
    *,
    layer: int | None,
    hook: str | None,
    source: str,
    cfg_kwargs: dict,
    out: Path | None,
    device: str = "cpu",
    progress: bool = True,
) -> ActivationStore:
    CollectConfig(hook_name="", **cfg_kwargs)  # every option checked before paying for a model load
    text_source = resolve_source(source, seed=cfg_kwargs.get("seed", 0))
    model = load_model(model_name, device=check_device(device))
    hook_name = resolve_hook(model.cfg.n_layers, layer, hook)
    cfg = CollectConfig(hook_name=hook_name, **cfg_kwargs)
    return collect_activations(model, text_source, cfg, out, model_name=model_name, progress=progress)
