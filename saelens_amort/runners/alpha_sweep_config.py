"""What `saeamort alpha-sweep` is asked to do, importable without torch (or pandas), so a bad option, config file or
feature file answers at once: the SweepConfig (checked when built), DEFAULT_ALPHAS, and `resolve_sweep`, which
merges a sweep YAML, the command line and the defaults into the config, the features and the output folder.

The SAEs per layer come from `--sae LAYER=SPEC` items, from an SAE-Lens release and a layer range (each layer's SAE id
read from the release directory, `saes.releases`: the one step here that loads SAE-Lens, and only with a release),
or from a YAML file holding the whole sweep: SweepConfig's fields plus `features`, `out`, `release`, `layers` and
`saes` (a mapping LAYER: SPEC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from saelens_amort.catalog import check_modes
from saelens_amort.config_file import read_yaml_mapping, typed_fields
from saelens_amort.devices import parse_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.feature_lists import Feature, read_features
from saelens_amort.layers import parse_layers
from saelens_amort.source_spec import check_source

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)
SWEEP_FILE_KEYS = ("features", "out", "release", "layers", "saes")
"""Keys of a sweep YAML besides SweepConfig's fields (whose `saes` is given as a mapping LAYER: SPEC)."""
TOY_DEFAULT_SAES = ((2, "toy/topk"),)


@dataclass(frozen=True)
class SweepConfig:
    model: str = "toy"
    saes: tuple[tuple[int, str], ...] = TOY_DEFAULT_SAES
    """(layer, SAE spec) pairs; each SAE reads its own hook, else blocks.{layer}.hook_resid_post."""
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    percentile: float = 90.0
    sequences: int = 16
    context_size: int = 64
    source: str | None = None
    batch: int = 16
    mode: str = "amortized"
    """Inference mode of the codes that are scaled (λ-modes get λ calibrated per SAE to the encoder's L0)."""
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        # torch-free checks: a bad option answers before anything heavy loads (the runner resolves the device)
        if not self.alphas:
            raise SaeAmortError("--alphas needs at least one value")
        if not all(-float("inf") < a < float("inf") for a in self.alphas):
            raise SaeAmortError(f"--alphas must be finite numbers, got {list(self.alphas)}")
        if not 0 <= self.percentile < 100:
            raise SaeAmortError(f"--percentile must be in [0, 100), got {self.percentile}")
        if self.sequences < 1 or self.batch < 1:
            raise SaeAmortError(f"--sequences and --batch must be positive, got {self.sequences} and {self.batch}")
        if self.context_size < 2:
            raise SaeAmortError(f"--context-size must be at least 2 (BOS and a token), got {self.context_size}")
        check_modes([self.mode])
        parse_device(self.device)
        if self.source is not None:
            check_source(self.source)


def parse_layer_saes(items: Sequence[str]) -> tuple[tuple[int, str], ...]:
    """`LAYER=SPEC` items (e.g. 8=saebench:TopK/trainer_2)."""
    out = []
    for item in items:
        layer, sep, spec = item.partition("=")
        if not sep or not spec or not layer.strip().isdigit():
            raise SaeAmortError(f"--sae takes LAYER=SPEC (e.g. 2=toy/topk), got {item!r}")
        out.append((int(layer), spec.strip()))
    return tuple(out)


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep YAML (module docstring) as the keyword arguments of `layer_saes` and SweepConfig, checked for types."""
    data = read_yaml_mapping(path, "--config")
    where = f"--config {path}"
    extra = {key: data.pop(key) for key in SWEEP_FILE_KEYS if key in data}
    out = typed_fields(SweepConfig, data, where)
    for key in ("features", "out", "release"):
        if key in extra and not isinstance(extra[key], str):
            raise SaeAmortError(f"{where}: {key} must be a string, got {extra[key]!r}")
        if key in extra:
            out[key] = extra[key]
    if "layers" in extra:
        layers = extra["layers"]
        ok = isinstance(layers, (str, int, list)) and not isinstance(layers, bool)
        if not ok or (isinstance(layers, list) and not all(type(v) is int for v in layers)):
            raise SaeAmortError(f"{where}: layers must be a range like 0-11 or a list of integers, got {layers!r}")
        out["layers"] = ",".join(map(str, layers)) if isinstance(layers, list) else str(layers)
    if "saes" in extra:
        saes = extra["saes"]
        if not isinstance(saes, dict) or not all(type(k) is int and isinstance(v, str) for k, v in saes.items()):
            raise SaeAmortError(f"{where}: saes must be a mapping of layers to SAE specs (e.g. 2: toy/topk), "
                                f"got {saes!r}")
        out["saes"] = tuple(sorted(saes.items()))
    return out


def layer_saes(explicit: Sequence[tuple[int, str]], release: str | None, layers: str | None, model: str,
               features: Sequence[Feature]) -> tuple[tuple[int, str], ...]:
    """The (layer, spec) pairs of a sweep: the release's SAE for each of `layers` (default: the features' layers),
    then the explicit pairs on top; with neither, the toy SAE for the toy model."""
    if layers is not None and release is None:
        raise SaeAmortError("--layers picks layers of a release; pass --release too (e.g. gpt2-small-res-jb)")
    by_layer: dict[int, str] = {}
    if release is not None:
        wanted = parse_layers(layers) if layers is not None else tuple(sorted({f.layer for f in features}))
        from saelens_amort.saes.releases import release_layer_ids  # loads torch and SAE-Lens: only for a release

        by_layer.update(release_layer_ids(release, wanted))
    by_layer.update(explicit)
    if not by_layer and model == "toy":
        return TOY_DEFAULT_SAES
    return tuple(sorted(by_layer.items()))


def resolve_sweep(config: Path | None, sae_items: Sequence[str], given: dict[str, Any]
                  ) -> tuple[SweepConfig, list[Feature], Path]:
    """The sweep to run, its features and its output folder: the `config` YAML, then the options `given` on the
    command line (None = not given) and the `LAYER=SPEC` items on top, then SweepConfig's defaults."""
    settings = read_sweep_file(config) if config is not None else {}
    settings.update({key: value for key, value in given.items() if value is not None})
    if "features" not in settings:
        raise SaeAmortError("no features to sweep; give --features FILE (or features: in the --config YAML)")
    features_file = Path(settings.pop("features"))
    out = Path(settings.pop("out", "runs/alpha-sweep"))
    explicit = dict(settings.pop("saes", ()))
    explicit.update(parse_layer_saes(sae_items))
    release, layers = settings.pop("release", None), settings.pop("layers", None)
    cfg = SweepConfig(**settings)  # every option checked before the feature file and the release are read
    features = read_features(features_file)
    if not features:
        raise SaeAmortError(f"no features to sweep in {features_file}; it needs at least one layer,feature row")
    return replace(cfg, saes=layer_saes(tuple(explicit.items()), release, layers, cfg.model, features)), features, out
