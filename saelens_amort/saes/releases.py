"""SAE-Lens pretrained releases: look a release up, and find the SAE id of each layer in it, without downloading.

The release directory (`pretrained_saes.yaml`, shipped inside sae-lens) lists each release's SAE ids and, for many,
their Neuronpedia ids. A layer's SAE is the id whose Neuronpedia id starts with that layer (`gpt2-small/8-res-jb`:
layer 8, which in gpt2-small-res-jb is `blocks.8.hook_resid_pre`; `12-res-jb` is `blocks.11.hook_resid_post`), else
the id that names the layer itself (`blocks.8.hook_resid_post`, `layer_8/width_16k/canonical`). Several ids for one
layer (widths, sparsities) are refused with the candidates listed, so the user picks one with `--sae LAYER=SPEC`.
Reading a Neuronpedia id's layer and a `--layers` range is torch-free, in `saelens_amort.layers`.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING

from saelens_amort.errors import SaeAmortError
from saelens_amort.layers import neuronpedia_layer

if TYPE_CHECKING:
    from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

PRETRAINED_LIST_HINT = (
    "list them with `from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory; "
    "print(list(get_pretrained_saes_directory()))` or see "
    "https://decoderesearch.github.io/SAELens/latest/pretrained_saes/"
)
_ID_LAYER = re.compile(r"(?:^|[._/])(?:blocks|layer|layers)[._](\d+)(?:[._/]|$)")


def get_release(release: str) -> "PretrainedSAELookup":
    """The directory entry of an SAE-Lens release (unknown names: one error with the closest known ones)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        did_you_mean = f" (did you mean {close}?)" if close else ""
        raise SaeAmortError(
            f"unknown SAE-Lens release {release!r}{did_you_mean}; {PRETRAINED_LIST_HINT}, or pass a local SAE directory"
        )
    return directory[release]


def _layer_of(sae_id: str, neuronpedia_id: str | None) -> int | None:
    if neuronpedia_id:
        layer = neuronpedia_layer(neuronpedia_id)
        if layer is not None:
            return layer
    m = _ID_LAYER.search(sae_id)
    return int(m[1]) if m else None


def release_layer_ids(release: str, layers: tuple[int, ...]) -> tuple[tuple[int, str], ...]:
    """(layer, `release/sae_id`) for each layer: the release's one SAE id for that layer (module docstring)."""
    lookup = get_release(release)
    neuronpedia = lookup.neuronpedia_id or {}
    by_layer: dict[int, list[str]] = {}
    for sae_id in lookup.saes_map:
        layer = _layer_of(sae_id, neuronpedia.get(sae_id))
        if layer is not None:
            by_layer.setdefault(layer, []).append(sae_id)
    out = []
    for layer in layers:
        ids = by_layer.get(layer, [])
        if not ids:
            raise SaeAmortError(f"release {release!r} has no SAE for layer {layer}; its layers are "
                                f"{sorted(by_layer) or 'not named in its SAE ids'}; pass --sae {layer}=SPEC instead")
        if len(ids) > 1:
            raise SaeAmortError(f"release {release!r} has {len(ids)} SAEs for layer {layer} (e.g. {ids[:4]}); "
                                f"choose one with --sae {layer}={release}/SAE_ID")
        out.append((layer, f"{release}/{ids[0]}"))
    return tuple(out)
