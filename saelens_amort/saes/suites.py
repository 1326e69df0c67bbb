"""SAEBench's published pythia-160m-deduped SAE suites (dictionary_learning format) and the default suite of `eval`.

Spec: `saebench:[WIDTH/]FAMILY/trainer_I`, e.g. `saebench:TopK/trainer_2` or `saebench:2pow12/JumpRelu/trainer_0`.
It names the folder `{FAMILY}_pythia-160m-deduped__0108/resid_post_layer_8/trainer_{I}` of the Hugging Face repository
`adamkarvonen/saebench_pythia-160m-deduped_width-{WIDTH}_date-0108` (WIDTH 2pow12 | 2pow14 | 2pow16, default 2pow14).
Only that folder is downloaded (`huggingface_hub.snapshot_download` with `allow_patterns`); offline, the local Hugging
Face cache is used, and a folder that is not there is one clear error saying what the user can do instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from saelens_amort.errors import SaeAmortError
from saelens_amort.layers import SUITE_LAYER, SUITE_MODEL
from saelens_amort.saes.hub import is_offline, network_errors

logger = logging.getLogger(__name__)

TOY_SAE_FAMILIES = ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated")
"""SAE families shipped with the embedded toy world (`toy/<family>`): the toy model's default suite."""

PREFIX = "saebench:"
WIDTHS = ("2pow12", "2pow14", "2pow16")
DEFAULT_WIDTH = "2pow14"
FAMILIES = ("Standard", "TopK", "BatchTopK", "MatryoshkaBatchTopK", "GatedSAE", "JumpRelu", "PAnneal")
DEFAULT_TRAINER = 2
"""A middle-sparsity trainer of each family (SAEBench's own examples load trainer_2)."""

_SPEC = re.compile(r"^(?:(?P<width>2pow\d+)/)?(?P<family>[A-Za-z]+)/trainer_(?P<trainer>\d+)$")
TOY_HINT = "or run the same study offline on the embedded toy world: saeamort eval --model toy"


def repo_id(width: str = DEFAULT_WIDTH) -> str:
    return f"adamkarvonen/saebench_pythia-160m-deduped_width-{width}_date-0108"


def folder(family: str, trainer: int, layer: int = SUITE_LAYER) -> str:
    return f"{family}_pythia-160m-deduped__0108/resid_post_layer_{layer}/trainer_{trainer}"


def parse_spec(spec: str) -> tuple[str, str, int]:
    """`saebench:[WIDTH/]FAMILY/trainer_I` → (width, family, trainer)."""
    m = _SPEC.match(spec[len(PREFIX):] if spec.startswith(PREFIX) else spec)
    if m is None:
        raise SaeAmortError(f"cannot read SAEBench spec {spec!r}; use saebench:[WIDTH/]FAMILY/trainer_I, "
                            f"e.g. saebench:TopK/trainer_{DEFAULT_TRAINER}")
    width, family = m["width"] or DEFAULT_WIDTH, m["family"]
    if width not in WIDTHS:
        raise SaeAmortError(f"unknown SAEBench width {width!r}; use one of {', '.join(WIDTHS)}")
    if family not in FAMILIES:
        raise SaeAmortError(f"unknown SAEBench family {family!r}; use one of {', '.join(FAMILIES)}")
    return width, family, int(m["trainer"])


def default_suite(model: str, layer: int | None, *, width: str = DEFAULT_WIDTH, trainer: int = DEFAULT_TRAINER
                  ) -> tuple[str, ...]:
    """The SAE specs `eval` uses when none is given: the toy SAEs for `toy`, SAEBench's suite for pythia-160m-deduped
    layer 8; anything else must name its SAEs."""
    if model == "toy":
        return tuple(f"toy/{f}" for f in TOY_SAE_FAMILIES)
    if Path(model).name.removeprefix("EleutherAI/") == SUITE_MODEL and layer == SUITE_LAYER:
        return tuple(f"{PREFIX}{width}/{family}/trainer_{trainer}" for family in FAMILIES)
    raise SaeAmortError(
        f"no default SAE suite for {model!r} at layer {layer}; pass --sae RELEASE/SAE_ID, --sae saebench:FAMILY/"
        f"trainer_I (pythia-160m-deduped layer 8) or --sae-path DIR, {TOY_HINT}"
    )


def fetch(spec: str) -> Path:
    """The local folder of a SAEBench SAE: downloaded when online, from the Hugging Face cache when offline."""
    from huggingface_hub import snapshot_download

    width, family, trainer = parse_spec(spec)
    sub = folder(family, trainer)
    offline = is_offline()
    state = "offline (HF_HUB_OFFLINE)" if offline else "unreachable"
    missing = SaeAmortError(
        f"SAEBench SAE {spec} ({repo_id(width)}/{sub}) is not in the local Hugging Face cache and the hub is {{}}; "
        f"download it where there is network (hf download {repo_id(width)} --include '{sub}/*'), pass the folder "
        f"with --sae-path, {TOY_HINT}"
    )
    try:
        root = snapshot_download(repo_id(width), allow_patterns=[f"{sub}/*"], local_files_only=offline)
    except network_errors() as e:
        raise SaeAmortError(str(missing).format(state)) from e
    path = Path(root) / sub
    if not (path / "ae.pt").is_file():
        if offline:  # the snapshot is cached, this folder of it is not
            raise SaeAmortError(str(missing).format(state))
        raise SaeAmortError(f"{repo_id(width)} has no {sub}/ae.pt (is trainer_{trainer} in this suite?); "
                            "list the repository's folders on huggingface.co and pick an existing trainer")
    return path
