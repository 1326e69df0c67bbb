"""Cross-domain generalisation: train an SAE on domain A and one on domain B, evaluate each on both.

Outputs: cross_domain.csv (trained on × evaluated on: NMSE, explained variance, L0, dead fraction on that domain,
and the degradation relative to the in-domain SAE), selectivity.csv (per SAE and latent: mean activation on A − on
B), the two SAEs (sae_A/, sae_B/ with their training runs) and report.html.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.training.config import TrainConfig

if TYPE_CHECKING:
    import pandas as pd


def run_cross_domain(cfg: TrainConfig, domain_a: str, domain_b: str, out: Path, *, overwrite: bool = False,
                     progress: bool = True) -> pd.DataFrame:
    if domain_a == domain_b:  # before the imports below load torch and SAE-Lens
        raise SaeAmortError("--domain-a and --domain-b must differ")
    from saelens_amort.run_folder import check_run_folder, record_run

    record = {"train": cfg.as_json(), "domain_a": domain_a, "domain_b": domain_b}
    check_run_folder(Path(out), "cross-domain", record, overwrite=overwrite)  # another command's folder is refused
    import pandas as pd
    import plotly.graph_objects as go
    import torch

    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.models import load_model
    from saelens_amort.provenance import provenance
    from saelens_amort.report import Section, table_html, write_report
    from saelens_amort.runners.collect import resolve_hook
    from saelens_amort.atomic import write_atomic, write_text_atomic
    from saelens_amort.saes import load_sae
    from saelens_amort.training.run import HELD_OUT_ROWS, held_out_rows, reconstruction_scores, run_train

    out = Path(out)
    record_run(out, "cross-domain", record)
    cfg = on_device(cfg)
    domains = {"A": domain_a, "B": domain_b}
    model = load_model(cfg.model, device=cfg.device)
    hook = resolve_hook(model.cfg.n_layers, cfg.layer, cfg.hook)
    held, saes = {}, {}
    for name, source in domains.items():
        dcfg = replace(cfg, source=source)
        run_train(dcfg, out / f"sae_{name}", overwrite=overwrite, progress=progress)
        saes[name] = load_sae(str(out / f"sae_{name}" / "sae"), device=cfg.device)
        store = collect_activations(model, resolve_source(source, seed=cfg.seed), CollectConfig(
            hook_name=hook, n_tokens=cfg.tokens + HELD_OUT_ROWS, context_size=cfg.context_size, seed=cfg.seed),
            None, model_name=cfg.model, progress=False)
        held[name] = held_out_rows(store, cfg.tokens).to(cfg.device)
    rows = []
    for trained in domains:
        for evaluated in domains:
            rows.append({"trained_on": f"{trained} ({domains[trained]})",
                         "evaluated_on": f"{evaluated} ({domains[evaluated]})",
                         **reconstruction_scores(saes[trained], held[evaluated])})
    df = pd.DataFrame(rows)
    in_domain = {r["evaluated_on"]: r["nmse"] for r in rows if r["trained_on"][0] == r["evaluated_on"][0]}
    df["nmse_degradation"] = [r["nmse"] - in_domain[r["evaluated_on"]] for r in rows]
    sel_rows, fig = [], go.Figure()
    for name, sae in saes.items():
        with torch.no_grad():
            sel = (sae.encode(held["A"]).mean(0) - sae.encode(held["B"]).mean(0)).cpu()
        sel_rows += [{"sae": name, "latent": j, "selectivity_A_minus_B": float(v)} for j, v in enumerate(sel)]
        fig.add_histogram(x=sel.numpy(), name=f"SAE trained on {name}", opacity=0.6, nbinsx=60)
    fig.update_layout(barmode="overlay", title="Per-latent selectivity: mean activation on A − on B",
                      xaxis_title="selectivity", yaxis_title="latents")
    sel_df = pd.DataFrame(sel_rows)
    write_atomic(out / "cross_domain.csv", lambda p: df.to_csv(p, index=False))
    write_atomic(out / "selectivity.csv", lambda p: sel_df.to_csv(p, index=False))
    meta = {"domains": domains, "train_config": cfg.as_json(), "hook": hook, "provenance": provenance()}
    write_report(out / "report.html", f"Cross-domain generalisation — {domain_a} vs {domain_b}", [
        Section("Reconstruction and sparsity across domains", html=table_html(df)),
        Section("Latent selectivity", fig),
    ], provenance=meta)
    write_text_atomic(out / "cross_domain.json", json.dumps({**meta, "rows": rows}, indent=2, default=str))
    return df
