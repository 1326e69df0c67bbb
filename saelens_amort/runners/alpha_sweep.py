"""Runner for `saeamort alpha-sweep`: features of one or more layers (one SAE per layer) scaled by α.

The sweep (SweepConfig, its features and SAEs per layer) is resolved torch-free by `runners.alpha_sweep_config`. Each
SAE reads its own hook (`metadata.hook_name`; gpt2-small-res-jb's layer 8 is blocks.8.hook_resid_pre), else
blocks.{layer}.hook_resid_post.

Outputs in --out: per_feature_metrics.csv (feature × α), per_layer_summary.csv (layer × α means), snippets.json,
report.md and report.html (ΔCE and KL vs layer per α, the per-feature table, text snippets).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.feature_lists import Feature
from saelens_amort.interventions.alpha_sweep import real_positions, sweep_feature, top_snippets
from saelens_amort.provenance import provenance
from saelens_amort.run_folder import check_run_folder, record_run
from saelens_amort.runners.alpha_sweep_config import SweepConfig


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
    from saelens_amort.inference import get_mode, mode_lambda

    if not get_mode(mode).needs_lambda:
        return None
    real = real_positions(tokens, lengths)
    real[:, 0] = False
    with torch.no_grad():
        acts = model.run_with_cache(tokens, names_filter=hook)[1][hook][real]
    return mode_lambda(acts.reshape(acts.shape[0], -1), sae, mode)


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
