"""Layer numbers from what users type, torch-free so that a bad value answers before torch loads (importing
anything under `saelens_amort.saes` loads torch):

- the default suite's model and block (`SUITE_MODEL`, `SUITE_LAYER`: SAEBench's pythia-160m-deduped suites read
  block 8), which `--layer` follows when it is not given (`cli.options.resolve_layer`);
- `--layers` ranges of an SAE-Lens release (`parse_layers`: `0-11`, `2,4,6-8`);
- the layer of a Neuronpedia SAE id (`neuronpedia_layer`: `8-res-jb`, `gpt2-small/8-res-jb` → 8), as feature lists
  and the release directory name layers.
"""

from __future__ import annotations

import re

from saelens_amort.errors import SaeAmortError

SUITE_MODEL = "pythia-160m-deduped"
SUITE_LAYER = 8
_NEURONPEDIA_LAYER = re.compile(r"^(?:[^/]*/)?(\d+)-")


def parse_layers(text: str) -> tuple[int, ...]:
    """`0-11`, `2,4,6-8` → sorted distinct layers."""
    layers: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise SaeAmortError(f"--layers takes layers and ranges like 0-11 or 2,4,6-8, got {text!r}")
        layers.update(range(int(m[1]), int(m[2] or m[1]) + 1))
    return tuple(sorted(layers))


def neuronpedia_layer(layer_id: str) -> int | None:
    """The layer of a Neuronpedia SAE id (`8-res-jb` or `gpt2-small/8-res-jb` → 8); None if it names none."""
    m = _NEURONPEDIA_LAYER.match(layer_id.strip())
    return int(m[1]) if m else None
