"""Runner for `saeamort alpha-sweep`: features of one or more layers (one SAE per layer) scaled by α.

The SAEs per layer come from `--sae LAYER=SPEC` items, from an SAE-Lens release and a layer range (each layer's SAE id
read from the release directory, `saes.releases`), or from a YAML file holding the whole sweep: SweepConfig's fields
plus `features`, `out`, `release`, `layers` and `saes` (a mapping LAYER: SPEC). Each SAE reads its own hook
(`metadata.hook_name`; gpt2-small-res-jb's layer 8 is blocks.8.hook_resid_pre), else blocks.{layer}.hook_resid_post.

Outputs in --out: per_feature_metrics.csv (feature × α), per_layer_summary.csv (layer × α means), snippets.json,
report.md and report.html (ΔCE and KL vs layer per α, the per-feature table, text snippets).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from saelens_amort.config_file import read_yaml_mapping, typed_fields
from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.interventions.alpha_sweep import (
    DEFAULT_ALPHAS,
    Feature,
    real_positions,
    sweep_feature,
    top_snippets,
)
from saelens_amort.interventions.feature_lists import read_features
from saelens_amort.provenance import provenance
from saelens_amort.run_folder import check_run_folder, record_run
from saelens_amort.saes.releases import parse_layers, release_layer_ids

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
    percentile = settings.get("percentile", SweepConfig.percentile)
    if not 0 <= percentile < 100:
        raise SaeAmortError(f"--percentile must be in [0, 100), got {percentile}")
    features = read_features(Path(settings.pop("features")))
    out = Path(settings.pop("out", "runs/alpha-sweep"))
    explicit = dict(settings.pop("saes", ()))
    explicit.update(parse_layer_saes(sae_items))
    saes = layer_saes(tuple(explicit.items()), settings.pop("release", None), settings.pop("layers", None),
                      settings.get("model", SweepConfig.model), features)
    return SweepConfig(saes=saes, **settings), features, out


def eval_tokens(model, cfg: SweepConfig, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded evaluation sequences [B, T] (BOS first) and their real lengths [B]."""
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.runners.eval_inputs import splice_tokens

    source = resolve_source(cfg.source or ("toy" if cfg.model == "toy" else "hf:monology/pile-uncopyrighted"),
                            seed=cfg.seed)
    store = collect_activations(model, source, CollectConfig(hook_name=hook, n_tokens=cfg.sequences *
                                                             cfg.context_size, context_size=cfg.context_size,
                                                             seed=cfg.seed), None, model_name=cfg.model,
                                progress=False)
    tok = model.tokenizer
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
    seqs = splice_tokens(store, cfg.sequences, tok.bos_token_id if tok is not None else None, pad)
    return seqs.tokens, seqs.lengths


def run_alpha_sweep(cfg: SweepConfig, features: Sequence[Feature], out: Path, *,
                    overwrite: bool = False) -> pd.DataFrame:
    """Sweep every feature; outputs in `out` (another run's `out` is refused unless `overwrite`)."""
    from saelens_amort.models import load_model
    from saelens_amort.report import Section, metric_lines, table_html, write_report
    from saelens_amort.atomic import write_atomic
    from saelens_amort.saes import check_sae_fits, load_sae
    from saelens_amort.saes.loading import model_kwargs_for

    if not features:
        raise SaeAmortError("no features to sweep; give --features FILE (layer,feature[,label] CSV or latents JSON)")
    cfg = on_device(cfg)
    run = {**asdict(cfg), "features": [asdict(f) for f in features]}
    check_run_folder(out, "alpha-sweep", run, overwrite=overwrite)
    if not cfg.alphas:
        raise SaeAmortError("--alphas needs at least one value")
    by_layer = dict(cfg.saes)
    missing = sorted({f.layer for f in features} - set(by_layer))
    if missing:
        raise SaeAmortError(f"features at layer(s) {missing} but no SAE for them; pass --sae LAYER=SPEC or "
                            "--release RELEASE")
    loaded = {layer: load_sae(by_layer[layer], device=cfg.device) for layer in sorted({f.layer for f in features})}
    model = load_model(cfg.model, device=cfg.device, **model_kwargs_for(loaded.values()))
    saes = {}
    for layer, sae in loaded.items():
        own = sae.cfg.metadata.get("hook_name")
        hook = check_sae_fits(sae, model, None if own else f"blocks.{layer}.hook_resid_post")
        bad = [f.latent for f in features if f.layer == layer and not 0 <= f.latent < sae.cfg.d_sae]
        if bad:
            raise SaeAmortError(f"feature {bad[0]} at layer {layer} is out of range (d_sae={sae.cfg.d_sae})")
        saes[layer] = (hook, sae)
    tokens, lengths = eval_tokens(model, cfg, saes[min(saes)][0])
    tokens = tokens.to(cfg.device)
    lams = {layer: _lam(model, sae, hook, tokens, lengths, cfg.mode) for layer, (hook, sae) in saes.items()}
    with torch.no_grad():
        clean = model(tokens)
    rows, snippets, skipped = [], {}, []
    for f in features:
        hook, sae = saes[f.layer]
        res = sweep_feature(model, sae, hook, tokens, f.latent, cfg.alphas, percentile=cfg.percentile,
                            batch=cfg.batch, clean_logits=clean, mode=cfg.mode, lam=lams[f.layer], lengths=lengths)
        if not res:
            skipped.append(f"layer {f.layer} latent {f.latent}: never fires on the evaluation tokens")
            continue
        rows += [{"layer": f.layer, "hook": hook, "feature": f.latent, "label": f.label, **r} for r in res]
        snippets[f"{f.layer}/{f.latent}"] = top_snippets(model, sae, hook, tokens, f.latent, lengths=lengths)
    df = pd.DataFrame(rows)
    out = Path(out)
    record_run(out, "alpha-sweep", run)
    summary = (df.groupby(["layer", "alpha"], as_index=False)[["delta_ce", "kl"]].mean() if len(df)
               else pd.DataFrame(columns=["layer", "alpha", "delta_ce", "kl"]))
    write_atomic(out / "per_feature_metrics.csv", lambda p: df.to_csv(p, index=False))
    write_atomic(out / "per_layer_summary.csv", lambda p: summary.to_csv(p, index=False))
    write_atomic(out / "snippets.json", lambda p: p.write_text(json.dumps(snippets, indent=2)))
    write_atomic(out / "report.md", lambda p: p.write_text(_markdown(cfg, df, summary, snippets, skipped)))
    by_alpha = summary.assign(alpha=summary["alpha"].map(lambda a: f"α={a:g}"))
    write_report(out / "report.html", f"Feature α-sweep — {cfg.model}", [
        Section("ΔCE and KL vs layer, one line per α (features averaged)",
                metric_lines(by_alpha, ["delta_ce", "kl"], "layer", "alpha", "layer"),
                missing="no feature fired on the evaluation tokens"),
        Section("Per feature", html=table_html(df) if len(df) else "<p>none</p>"),
        Section("Top activating contexts", html="".join(
            f"<h3>{k}</h3><ul>{''.join(f'<li>{s}</li>' for s in v)}</ul>" for k, v in snippets.items())),
        Section("Skipped", html="<ul>" + "".join(f"<li>{s}</li>" for s in skipped) + "</ul>"),
    ], provenance={"config": asdict(cfg), **provenance()})
    return df


def _lam(model, sae, hook: str, tokens: torch.Tensor, lengths: torch.Tensor, mode: str) -> float | None:
    """λ calibrated on the real (non-BOS, non-padding) positions of the evaluation tokens."""
    from saelens_amort.inference import calibrate_lambda, get_mode

    if not get_mode(mode).needs_lambda:
        return None
    real = real_positions(tokens, lengths)
    real[:, 0] = False
    with torch.no_grad():
        acts = model.run_with_cache(tokens, names_filter=hook)[1][hook][real]
    return calibrate_lambda(acts.reshape(acts.shape[0], -1), sae, "unamortized", strict=False).lam


def _markdown(cfg: SweepConfig, df: pd.DataFrame, summary: pd.DataFrame, snippets: dict, skipped: list[str]) -> str:
    lines = [f"# Feature α-sweep — {cfg.model}", "", f"α ∈ {list(cfg.alphas)}, live above the {cfg.percentile:g}th "
             f"percentile of each latent's positive activations, {cfg.sequences} sequences.", "",
             "## Per layer (mean over features)", "", _md_table(summary), "",
             "## Per feature", "", _md_table(df), "", "## Snippets", ""]
    for k, v in snippets.items():
        lines += [f"- **{k}**"] + [f"  - {s}" for s in v]
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no optional dependency)."""
    if df.empty:
        return "none"
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")  # noqa: E731
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])
