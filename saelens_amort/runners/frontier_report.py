"""The `saeamort frontier` report: the prices first, then each SAE's frontier plot and the points."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from saelens_amort.report import Section, frontier_plot, table_html, write_report

PRICE_COLUMNS = ("sae", "mode", "encoder_l0", "encoder_nmse", "nmse_at_encoder_l0", "nmse_ratio", "l0_needed",
                 "l0_ratio", "note")
POINT_COLUMNS = ("sae", "mode", "knob", "value", "l0", "nmse", "fvu", "ce_recovered", "kl", "encoder_point")


def build_frontier_report(path: Path, points: pd.DataFrame, prices: pd.DataFrame, meta: dict) -> Path:
    cfg = meta.get("config", {}).get("eval", {})
    sections = [
        Section("Price of amortization at the encoder's point", html=table_html(
            prices[[c for c in PRICE_COLUMNS if c in prices.columns]]) if not prices.empty else None,
            missing="no price: no mode besides the encoder has a frontier"),
        Section("Density frontiers (NMSE vs L0; the star is the encoder as trained)", frontier_plot(points)),
        Section("Frontier points", html=table_html(points[[c for c in POINT_COLUMNS if c in points.columns]])),
    ]
    if meta.get("skipped"):
        lines = (html.escape(f"{k}: {v}") for k, v in meta["skipped"].items())
        sections.append(Section("Skipped", html="<br>".join(lines)))
    title = f"Density frontiers — {cfg.get('model', '?')} @ {meta.get('hook_name', '?')}"
    return write_report(path, title, sections, provenance={k: v for k, v in meta.items() if k != "prices"})
