"""Runner for `saeamort gis`: calibrate the intervention's α to a KL target, generate, score (interventions/gis.py).

Outputs in --out: gis.csv (one row per KL target × prompt × decoding: clean and intervened text, fluency CE, target
class probability), gis.json (config, α per target, KL reached, forward passes) and report.html (side by side).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.provenance import provenance
from saelens_amort.run_folder import check_run_folder, record_run
from saelens_amort.runners.gis_config import GisConfig

PROMPT_TOKENS = 6


def run_gis(cfg: GisConfig, out: Path, *, overwrite: bool = False) -> pd.DataFrame:
    """Calibrate, generate and score; outputs in `out` (another run's `out` is refused unless `overwrite`)."""
    from saelens_amort.inference import mode_lambda
    from saelens_amort.interventions.gis import calibrate_alpha, continuation_scores, gis_hook
    from saelens_amort.interventions.alpha_sweep import real_positions
    from saelens_amort.interventions.hooks import checked_latents
    from saelens_amort.interventions.patching import prompt_tokens
    from saelens_amort.report import Section, table_html, write_report
    from saelens_amort.runners.alpha_sweep import eval_tokens
    from saelens_amort.runners.alpha_sweep_config import SweepConfig
    from saelens_amort.atomic import write_atomic
    from saelens_amort.runners.tpp import pooled, prepare
    from saelens_amort.runners.tpp_config import TppConfig

    cfg = on_device(cfg)
    check_run_folder(out, "gis", asdict(cfg), overwrite=overwrite)
    tcfg = TppConfig(model=cfg.model, layer=cfg.layer, sae=cfg.sae, modes=(cfg.mode,), tokens=cfg.probe_tokens,
                     source=cfg.source, seed=cfg.seed, device=cfg.device)
    latents: list[int] = []  # checked against the SAE before any activation is collected
    model, sae, hook, store = prepare(tcfg, lambda sae: latents.extend(checked_latents(cfg.latents, sae.cfg.d_sae)))
    probe = None
    if cfg.class_id is not None:
        docs, probe = pooled(TppConfig(**{**asdict(tcfg), "modes": ("amortized",)}), sae, store, "amortized")
        if cfg.class_id not in probe.classes:
            raise SaeAmortError(f"class id {cfg.class_id} is not among the labels {probe.classes} "
                                f"({', '.join(docs.label_names)})")
    lam = mode_lambda(store.load(1024).acts, sae, cfg.mode)
    hook_kw = {"model": model, "sae": sae, "hook_name": hook, "latents": latents, "kind": cfg.kind, "mode": cfg.mode,
               "lam": lam}
    seqs, lengths = eval_tokens(model, SweepConfig(model=cfg.model, sequences=cfg.sequences,
                                                   context_size=cfg.context_size, source=cfg.source, seed=cfg.seed),
                                hook)
    seqs, mask = seqs.to(cfg.device), real_positions(seqs, lengths).to(cfg.device)
    prompts = list(cfg.prompts) or [model.to_string(seqs[i, 1:1 + PROMPT_TOKENS]) for i in range(cfg.n_prompts)]
    rows, calibrations = [], []
    for target in cfg.kl_targets:
        cal = calibrate_alpha(model, seqs, mask, target, **{k: v for k, v in hook_kw.items() if k != "model"})
        calibrations.append(asdict(cal))
        for prompt in prompts:
            toks = prompt_tokens(model, prompt, cfg.max_new_tokens).to(cfg.device)
            for decoding in ("greedy", "sampled"):
                texts = {}
                for arm in ("clean", "intervened"):
                    torch.manual_seed(cfg.seed)
                    ctx = (gis_hook(alpha=cal.alpha, **{**hook_kw, "rms_ratio": cal.rms_ratio, "lam": cal.lam})
                           if arm == "intervened" else contextlib.nullcontext())
                    with ctx:
                        gen = model.generate(toks, max_new_tokens=cfg.max_new_tokens, do_sample=decoding == "sampled",
                                             stop_at_eos=False, use_past_kv_cache=False, verbose=False)
                    ce, prob = continuation_scores(model, hook, gen, toks.shape[1], probe, cfg.class_id)
                    texts[arm] = (model.to_string(gen[0, toks.shape[1]:]), ce, prob)
                rows.append({"kl_target": target, "alpha": cal.alpha, "kl": cal.kl, "prompt": prompt,
                             "decoding": decoding, "clean": texts["clean"][0], "intervened": texts["intervened"][0],
                             "ce_clean": texts["clean"][1], "ce_intervened": texts["intervened"][1],
                             "p_class_clean": texts["clean"][2], "p_class_intervened": texts["intervened"][2]})
    df = pd.DataFrame(rows)
    df["class_shift"] = df["p_class_intervened"] - df["p_class_clean"] if probe is not None else None
    out = Path(out)
    record_run(out, "gis", asdict(cfg))
    meta = {"config": asdict(cfg), "hook": hook, "lam": lam, "calibration": calibrations, "provenance": provenance()}
    write_atomic(out / "gis.csv", lambda p: df.to_csv(p, index=False))
    shown = df[["kl_target", "decoding", "prompt", "clean", "intervened", "ce_clean", "ce_intervened", "class_shift"]]
    write_report(out / "report.html", f"GIS — latents {latents} of {cfg.sae} ({cfg.kind}, {cfg.mode})", [
        Section("Calibration (α per KL target)", html=table_html(pd.DataFrame(calibrations))),
        Section("Generations side by side", html=table_html(shown)),
    ], provenance=meta)
    write_atomic(out / "gis.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return df
