"""The HTML report renders in a real headless Chromium: no JS errors, every figure drawn with its data."""

import numpy as np
import pandas as pd
import pytest
from helpers import chromium_probe

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

SAES = ["toy/topk", "toy/standard"]
MODES = ["amortized", "semi", "unamortized"]


@pytest.fixture
def results() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [dict(sae=s, mode=m, nmse=rng.uniform(0.01, 0.1), l0=rng.uniform(10, 40), dead_rate=rng.uniform(0, 0.3),
                 flops_per_token=rng.uniform(1e5, 1e7)) for s in SAES for m in MODES]
    return pd.DataFrame(rows)


def test_figures_carry_every_series(results):
    bars = metric_bars(results, ["nmse", "l0", "dead_rate", "not_a_column"])
    assert len(bars.data) == 3 * len(MODES)  # three metrics present, one trace per mode each
    assert [b["label"] for b in bars.layout.updatemenus[0].buttons] == ["nmse", "l0", "dead_rate"]
    assert sum(t.visible for t in bars.data) == len(MODES)
    assert metric_bars(results, ["missing"]) is None
    assert pareto_scatter(results.drop(columns="l0")) is None


def test_report_renders_in_headless_chromium(results, tmp_path):
    rng = np.random.default_rng(1)
    freqs = {(s, m): rng.uniform(0, 0.2, 256) for s in SAES for m in MODES}
    gaps = {s: rng.exponential(1.0, 500) for s in SAES}
    steps = pd.DataFrame([dict(sae=s, semi_steps=k, nmse=1 / k, l0=20 + k) for s in SAES for k in (5, 10, 25, 50)])
    sections = [
        Section("Metrics", metric_bars(results, ["nmse", "l0", "dead_rate"])),
        Section("Firing frequencies", firing_histograms(freqs)),
        Section("Pareto", pareto_scatter(results)),
        Section("Gap", gap_distribution(gaps)),
        Section("Cost", cost_quality(results)),
        Section("Semi steps", semi_curves(steps, ["nmse", "l0"])),
        Section("Table", html=table_html(results)),
        Section("Absent", None, missing="no dynamics in this run"),
    ]
    path = write_report(tmp_path / "report.html", "test report", sections, provenance={"git": "abc"})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp file left behind"
    text = path.read_text()
    assert "<script src=" not in text and text.count("plotly.js v") == 1  # plotly.js inlined once: works offline
    probe = chromium_probe(path, tmp_path)
    assert probe["errors"] == []
    assert len(probe["plots"]) == 6
    for plot in probe["plots"]:
        assert plot["traces"] > 0 and plot["svg"] > 0 and plot["points"] > 0, plot
    menus = {p["id"]: p["menus"] for p in probe["plots"]}
    assert menus["fig0"] == 1 and menus["fig1"] == 1 and menus["fig5"] == 1  # dropdowns on bars, histograms, curves


def test_the_probe_sees_js_errors_and_empty_pages(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><head></head><body><script>throw new Error('boom')</script></body></html>")
    probe = chromium_probe(broken, tmp_path)
    assert any("boom" in e for e in probe["errors"]) and probe["plots"] == []
