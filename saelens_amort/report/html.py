"""Assemble one self-contained HTML report (plotly.js inlined once, works offline), written atomically."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from saelens_amort.atomic import write_text_atomic

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem} h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;font-size:.85rem} td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f5f5f5} .note{color:#777;font-style:italic} pre{background:#f7f7f7;padding:.6rem;overflow:auto}
"""


@dataclass(frozen=True)
class Section:
    title: str
    """Heading shown above the section."""
    figure: go.Figure | None = None
    """A plotly figure; None renders `missing` instead."""
    html: str | None = None
    """Raw HTML (e.g. a table) shown instead of, or below, the figure."""
    missing: str = "no data for this section"
    """What the reader sees when there is neither a figure nor HTML."""


def table_html(df: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    df = df.map(lambda v: float("nan") if v is None else v)  # na_rep does not reach None in object columns
    table = df.to_html(index=False, border=0, float_format=lambda v: float_format.format(v), na_rep="—")
    return f'<div style="overflow-x:auto">{table}</div>'


def render(title: str, sections: Sequence[Section], provenance: dict | None = None) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    first_plot = True
    for i, sec in enumerate(sections):
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.figure is not None:
            parts.append(pio.to_html(
                sec.figure, full_html=False, include_plotlyjs=first_plot, div_id=f"fig{i}",
                config={"displaylogo": False, "responsive": True},
            ))
            first_plot = False
        if sec.html is not None:
            parts.append(sec.html)
        if sec.figure is None and sec.html is None:
            parts.append(f'<p class="note">{html.escape(sec.missing)}</p>')
    if provenance:
        parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(provenance, indent=2, default=str)) + "</pre>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def write_report(path: Path, title: str, sections: Sequence[Section], provenance: dict | None = None) -> Path:
    """Write the report to `path` via a temporary file and a rename: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render(title, sections, provenance))
    return path
