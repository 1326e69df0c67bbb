"""Interactive plotly reports: figures from tidy results, assembled into one offline HTML file."""

from saelens_amort.report.figures import (
    cost_quality,
    firing_histograms,
    frontier_plot,
    gap_distribution,
    metric_bars,
    pareto_scatter,
    metric_lines,
    semi_curves,
    step_curves,
)
from saelens_amort.report.html import Section, render, table_html, write_report

__all__ = [
    "Section",
    "cost_quality",
    "firing_histograms",
    "frontier_plot",
    "gap_distribution",
    "metric_bars",
    "pareto_scatter",
    "render",
    "metric_lines",
    "semi_curves",
    "step_curves",
    "table_html",
    "write_report",
]
