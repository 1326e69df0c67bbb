"""Outputs of the intervention commands: CSV tables and report sections (atomic writes)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from saelens_amort.interventions.patching import Patched
from saelens_amort.provenance import provenance
from saelens_amort.report import Section, table_html, write_report
from saelens_amort.atomic import write_atomic


def side_by_side_html(rows: Sequence[Patched]) -> str:
    cells = "".join(
        f"<tr><td>{html.escape(r.prompt)}</td><td>{html.escape(r.original)}</td><td>{html.escape(r.patched)}</td></tr>"
        for r in rows)
    return f"<table><tr><th>prompt</th><th>original</th><th>patched</th></tr>{cells}</table>"


def write_patch_outputs(out: Path, rows: Sequence[Patched], config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame([r.__dict__ for r in rows])
    write_atomic(out / "patch.csv", lambda p: df.to_csv(p, index=False))
    sections = [Section("Original vs patched", html=side_by_side_html(rows)),
                Section("Configuration", html=table_html(pd.DataFrame([config])))]
    write_report(out / "report.html", "Patching", sections, provenance=provenance())
