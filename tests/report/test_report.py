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
    # Every dropdown choice redraws its own title and y-axis name (plotly.js 3+ ignores a string "title" in an
    # update: the titles went blank on the first click).
    choices = {p["id"]: p["choices"] for p in probe["plots"]}
    assert [(c["label"], c["title"], c["ytitle"]) for c in choices["fig0"]] == [
        (m, f"{m} by SAE and mode", m) for m in ("nmse", "l0", "dead_rate")]
    assert [c["title"] for c in choices["fig1"]] == [f"Firing frequency — {s}" for s in SAES]
    assert [(c["title"], c["ytitle"]) for c in choices["fig5"]] == [(f"{m} vs semi-amortized steps K", m) for m in ("nmse", "l0")]
    assert all(c["visible"] > 0 for cs in choices.values() for c in cs)


def test_frontier_plot_names_knobs_and_the_points_a_log_axis_cannot_show(tmp_path):
    from saelens_amort.report.figures import frontier_plot

    points = pd.DataFrame([
        dict(sae="toy/topk", mode="amortized", knob=None, value=float("nan"), l0=16.0, nmse=0.009, encoder_point=True),
        dict(sae="toy/topk", mode="unamortized", knob="lam", value=2.5, l0=20.0, nmse=0.02, encoder_point=False),
        dict(sae="toy/topk", mode="unamortized", knob="lam", value=100.0, l0=0.0, nmse=1.0, encoder_point=False),
        dict(sae="toy/topk", mode="ksparse", knob="k", value=8.0, l0=8.0, nmse=0.05, encoder_point=False),
    ])
    fig = frontier_plot(points)
    hover = {t.name: list(t.customdata) for t in fig.data if t.customdata is not None}
    assert hover["amortized"] == ["the encoder as trained"] and hover["ksparse"] == ["k 8"]
    assert hover["unamortized"] == ["lam 100", "lam 2.5"]  # sorted by L0
    notes = [a.text for a in fig.layout.annotations]
    assert len(notes) == 1 and notes[0].startswith("1 point(s) at L0 = 0") and "toy/topk / unamortized" in notes[0]
    probe = chromium_probe(write_report(tmp_path / "f.html", "frontier", [Section("F", fig)]), tmp_path)
    assert probe["errors"] == [] and probe["plots"][0]["choices"][0]["title"] == "Density frontier — toy/topk"


def test_tables_show_missing_values_as_a_dash():
    html = table_html(pd.DataFrame({"mode": ["amortized", "semi"], "lam": [None, 0.5]}, dtype=object))
    assert "None" not in html and "nan" not in html.lower() and html.count("—") == 1


def test_the_probe_sees_js_errors_and_empty_pages(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><head></head><body><script>throw new Error('boom')</script></body></html>")
    probe = chromium_probe(broken, tmp_path)
    assert any("boom" in e for e in probe["errors"]) and probe["plots"] == []
