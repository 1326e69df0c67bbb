"""Runners for `saeamort select-latents` and `saeamort tpp` (orchestration; the method is interventions/tpp.py).

One activation store (cached), one SAE, one λ per λ-mode calibrated on the first `calib_tokens` rows to the encoder's
mean L0 (as in eval); per mode the codes are pooled per document, class probes are fitted once, latents selected per
class, and the TPP score computed for every M, with random latents of the same count as the baseline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd

from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.provenance import provenance
from saelens_amort.run_folder import check_run_file, check_run_folder, record_run, run_record
from saelens_amort.runners.tpp_config import TppConfig, check_top_ms
from saelens_amort.runners.records import json_records

RANDOM_SEED = 0


def _check_top_m(top_ms, sae) -> None:
    if max(top_ms) > sae.cfg.d_sae:
        raise SaeAmortError(f"--top-m {max(top_ms)} exceeds d_sae={sae.cfg.d_sae}")


def prepare(cfg: TppConfig, check_sae: Callable[[Any], None] | None = None):
    """Model, SAE, hook and the (cached) activation store of `cfg`; `check_sae(sae)` runs before any activation is
    collected (a request the SAE cannot serve fails with its one error line, before the collection's log)."""
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.models import load_model
    from saelens_amort.runners.collect import resolve_hook
    from saelens_amort.saes import check_sae_fits, load_sae

    cfg = on_device(cfg)
    model = load_model(cfg.model, device=cfg.device)
    hook = resolve_hook(model.cfg.n_layers, cfg.layer, cfg.hook)
    sae = load_sae(cfg.resolved_sae(), device=cfg.device)
    check_sae_fits(sae, model, hook)
    if check_sae is not None:
        check_sae(sae)
    source = resolve_source(cfg.source or ("toy" if cfg.model == "toy" else "hf:fancyzhx/ag_news"), seed=cfg.seed)
    store = collect_activations(model, source, CollectConfig(hook_name=hook, n_tokens=cfg.tokens, seed=cfg.seed),
                                None, model_name=cfg.model, progress=False)
    return model, sae, hook, store


def pooled(cfg: TppConfig, sae, store, mode: str):
    from saelens_amort.inference import mode_lambda
    from saelens_amort.interventions.tpp import ClassProbes, pool_documents

    lam = mode_lambda(store.load(cfg.calib_tokens).acts, sae, mode)
    docs = pool_documents(store, sae, mode, lam=lam, pooling=cfg.pooling)
    return docs, ClassProbes(docs, seed=cfg.seed)


def run_select(cfg: TppConfig, class_id: int, top_m: int, mode: str, out: Path, *, overwrite: bool = False) -> dict:
    """Class `class_id`'s top-M latents in `mode`; written to `out` (JSON) with the mode, λ and scores. An `out`
    written by another selection is refused unless `overwrite`."""
    from saelens_amort.interventions.tpp import select_latents
    from saelens_amort.atomic import write_atomic

    cfg = on_device(cfg)
    run = {**asdict(cfg), "class_id": class_id, "top_m": top_m, "mode": mode}
    check_run_file(out, "select-latents", run, overwrite=overwrite)
    _, sae, hook, store = prepare(TppConfig(**{**asdict(cfg), "modes": (mode,)}),
                                  lambda sae: _check_top_m([top_m], sae))
    docs, probes = pooled(cfg, sae, store, mode)
    latents, scores = select_latents(docs, sae, probes, class_id, top_m)
    record = {"class_id": class_id, "class_name": docs.label_names[class_id] if class_id < len(docs.label_names)
              else None, "top_m": top_m, "mode": mode, "lam": docs.lam, "latents": latents,
              "scores": [float(scores[j]) for j in latents], "sae": cfg.resolved_sae(), "hook": hook,
              "config": asdict(cfg), "provenance": provenance(), "run": run_record("select-latents", run)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda p: p.write_text(json.dumps(record, indent=2, default=str)))
    return record


def run_tpp(cfg: TppConfig, top_ms: tuple[int, ...], out: Path, *, overwrite: bool = False) -> pd.DataFrame:
    """TPP(M) per mode with the random baseline; tpp.csv, tpp.json and report.html in `out` (another run's `out` is
    refused unless `overwrite`)."""
    from saelens_amort.interventions.tpp import select_latents, tpp_matrix, tpp_score
    from saelens_amort.report import Section, metric_lines, table_html, write_report
    from saelens_amort.atomic import write_atomic

    check_top_ms(top_ms)
    cfg = on_device(cfg)
    run = {**asdict(cfg), "top_m": list(top_ms)}
    check_run_folder(out, "tpp", run, overwrite=overwrite)
    _, sae, hook, store = prepare(cfg, lambda sae: _check_top_m(top_ms, sae))
    rows = []
    for mode in cfg.modes:
        docs, probes = pooled(cfg, sae, store, mode)
        rng = np.random.default_rng(RANDOM_SEED)
        for m in top_ms:
            sel = {c: select_latents(docs, sae, probes, c, m)[0] for c in probes.classes}
            rnd = {c: rng.choice(sae.cfg.d_sae, m, replace=False).tolist() for c in probes.classes}
            score, per = tpp_score(tpp_matrix(docs, sae, probes, sel))
            baseline, _ = tpp_score(tpp_matrix(docs, sae, probes, rnd))
            rows.append({"mode": mode, "top_m": m, "lam": docs.lam, "tpp": score, "tpp_random": baseline,
                         **{f"tpp/{docs.label_names[c]}": v for c, v in per.items()}})
    df = pd.DataFrame(rows)
    out = Path(out)
    record_run(out, "tpp", run)
    write_atomic(out / "tpp.csv", lambda p: df.to_csv(p, index=False))
    meta = {"config": asdict(cfg), "top_m": list(top_ms), "sae": cfg.resolved_sae(), "hook": hook,
            "provenance": provenance(), "rows": json_records(df)}
    metrics = ["tpp", "tpp_random", *[c for c in df.columns if c.startswith("tpp/")]]
    write_report(out / "report.html", f"TPP — {cfg.resolved_sae()} @ {hook}", [
        Section("TPP score vs number of ablated latents", metric_lines(df, metrics, "top_m", "mode", "latents M",
                                                                         log_x=True)),
        Section("Table", html=table_html(df)),
    ], provenance={k: v for k, v in meta.items() if k != "rows"})
    write_atomic(out / "tpp.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return df
