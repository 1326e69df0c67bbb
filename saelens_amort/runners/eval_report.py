"""The `saeamort eval` report: the results table as interactive plotly sections in one offline HTML file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from saelens_amort.report import (
    Section,
    cost_quality,
    firing_histograms,
    gap_distribution,
    metric_bars,
    pareto_scatter,
    semi_curves,
    table_html,
    write_report,
)

BAR_METRICS = (
    "nmse", "fvu", "l0", "dead_rate", "dense_rate@0.1", "dense_rate@0.2",
    "pseudo/f1@1", "pseudo/f1@2", "pseudo/f1@5", "pseudo/delta_f1",
    "real/f1@1", "real/f1@2", "real/f1@5", "real/delta_f1",
    "pseudo/absorption_rate", "real/absorption_rate",
    "gap_mean", "gap_median", "ce_recovered", "kl", "ce_recovered_keep_error", "kl_keep_error",
    "flops_per_token", "seconds_per_token",
)
STEP_METRICS = ("nmse", "l0", "gap_mean", "real/f1@1", "real/absorption_rate", "ce_recovered", "kl",
                "seconds_per_token")
TABLE_COLUMNS = ("sae", "mode", "architecture", "sae_dtype", "objective", "lam", "density_target",
                 "density_achieved", "density_matched", "nmse", "fvu", "l0", "dead_rate", "dense_rate@0.1",
                 "real/f1@1", "real/delta_f1", "real/absorption_rate", "gap_mean", "ce_recovered", "kl",
                 "flops_per_token", "skipped")


def build_report(path: Path, df: pd.DataFrame, freqs: dict, gaps: dict[str, np.ndarray], meta: dict,
                 steps: pd.DataFrame | None = None, extra_sections: list[Section] | None = None) -> Path:
    cfg = meta.get("config", {})
    if steps is None:
        steps = semi_sweep_rows(df)
    table = df[[c for c in TABLE_COLUMNS if c in df.columns]]
    sections = [
        *(extra_sections or []),
        Section("Results (one row per SAE × mode)", html=table_html(table)),
        Section("Price of amortization, decomposed", html=price_table(df),
                missing="needs the rows amortized, amortized+refit and semi_ksparse or ksparse (the default modes)"),
        Section("Metrics by SAE and mode", metric_bars(df, BAR_METRICS)),
        Section("Firing frequencies", firing_histograms(freqs)),
        Section("Reconstruction vs sparsity", pareto_scatter(df)),
        Section("Amortization gap", gap_distribution(gaps),
                missing="no gap: no λ-mode was run (amortized only)"),
        Section("Cost vs quality", cost_quality(df)),
        Section("Semi-amortized steps", semi_curves(steps, STEP_METRICS) if steps is not None else None,
                missing="run `saeamort sweep-semi` for metrics against the number of semi steps"),
    ]
    title = f"Price of amortized inference — {cfg.get('model', '?')} @ {meta.get('hook_name', '?')}"
    return write_report(path, title, sections, provenance={k: v for k, v in meta.items() if k != "rows"})


def semi_sweep_rows(df: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of a semi-steps sweep (the amortized rows as K = 0), or None when no SAE has more than one K."""
    if "semi_steps" not in df.columns or "inference_mode" not in df.columns:
        return None
    semi = df[df["inference_mode"] == "semi"]
    if semi.empty or semi.groupby("sae")["semi_steps"].nunique().max() < 2:
        return None
    amortized = df[df["inference_mode"] == "amortized"].assign(semi_steps=0)
    return pd.concat([amortized, semi], ignore_index=True)


def price_table(df: pd.DataFrame) -> str | None:
    """One line per SAE: the encoder's error split into magnitude (encoder − refit on its own support) and support
    (refit − best prior-matched code at the same per-row L0), in each metric measured; None when no SAE has it."""
    cols = [c for c in df.columns if c.startswith("price_")]
    if "price_best_mode" not in cols:
        return None
    table = df.dropna(subset=["price_best_mode"]).drop_duplicates("sae")[["sae", *cols]]
    return table_html(table) if len(table) else None

