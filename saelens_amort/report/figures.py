"""Plotly figures for the amortization report. Each takes tidy data (one row per SAE × mode) and returns a Figure,
or None when the data it needs is absent (the report then says what is missing instead of failing).

Every figure with a choice of SAE or metric carries a dropdown (plotly `updatemenus`), and every point or bar
has hover values, so the HTML is explorable offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MODE_COLORS = {
    "amortized": "#1f77b4",
    "semi": "#ff7f0e",
    "unamortized": "#2ca02c",
    "omp": "#9467bd",
    "mp": "#8c564b",
}


def _color(mode: str) -> str | None:
    return MODE_COLORS.get(mode)


def _dropdown(labels: Sequence[str], visible: Sequence[Sequence[bool]], extra: Sequence[dict] | None = None) -> list:
    buttons = []
    for i, label in enumerate(labels):
        args: list = [{"visible": list(visible[i])}]
        if extra is not None:
            args.append(extra[i])
        buttons.append(dict(label=label, method="update", args=args))
    return [dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.15, yanchor="top", showactive=True)]


def metric_bars(df: pd.DataFrame, metrics: Sequence[str]) -> go.Figure | None:
    """Grouped bars: x = SAE, one bar per mode; a dropdown picks the metric."""
    metrics = [m for m in metrics if m in df.columns and df[m].notna().any()]
    if df.empty or not metrics:
        return None
    modes = list(dict.fromkeys(df["mode"]))
    fig = go.Figure()
    for mi, metric in enumerate(metrics):
        for mode in modes:
            sub = df[df["mode"] == mode]
            fig.add_bar(
                x=sub["sae"], y=sub[metric], name=mode, marker_color=_color(mode), visible=mi == 0,
                legendgroup=mode, showlegend=True,
                hovertemplate=f"SAE %{{x}}<br>mode {mode}<br>{metric} %{{y:.4g}}<extra></extra>",
            )
    n = len(modes)
    visible = [[j // n == i for j in range(len(metrics) * n)] for i in range(len(metrics))]
    fig.update_layout(
        barmode="group", title=f"{metrics[0]} by SAE and mode", yaxis_title=metrics[0],
        updatemenus=_dropdown(metrics, visible, [{"title.text": f"{m} by SAE and mode", "yaxis.title.text": m} for m in metrics]),
    )
    return fig


def firing_histograms(freqs: Mapping[tuple[str, str], np.ndarray], bins: int = 40) -> go.Figure | None:
    """Histogram of log10 firing frequency per latent, one trace per mode; a dropdown picks the SAE.
    Latents that never fire are counted in the leftmost bin (log10 1e-7)."""
    if not freqs:
        return None
    saes = list(dict.fromkeys(s for s, _ in freqs))
    keys = list(freqs)
    fig = go.Figure()
    for sae, mode in keys:
        f = np.asarray(freqs[(sae, mode)], dtype=np.float64)
        fig.add_histogram(
            x=np.log10(np.clip(f, 1e-7, 1.0)), nbinsx=bins, name=mode, marker_color=_color(mode), opacity=0.6,
            visible=sae == saes[0], hovertemplate=f"{mode}<br>log10 f %{{x}}<br>latents %{{y}}<extra></extra>",
        )
    visible = [[k[0] == sae for k in keys] for sae in saes]
    fig.update_layout(
        barmode="overlay", title=f"Firing frequency — {saes[0]}", xaxis_title="log10 firing frequency",
        yaxis_title="latents", updatemenus=_dropdown(saes, visible, [{"title.text": f"Firing frequency — {s}"} for s in saes]),
    )
    return fig


def pareto_scatter(df: pd.DataFrame, x: str = "l0", y: str = "nmse") -> go.Figure | None:
    """NMSE vs L0, one marker series per mode (lower-left is better)."""
    if df.empty or x not in df.columns or y not in df.columns:
        return None
    fig = go.Figure()
    for mode, sub in df.groupby("mode", sort=False):
        fig.add_scatter(
            x=sub[x], y=sub[y], mode="markers+text", name=str(mode), text=sub["sae"], textposition="top center",
            marker=dict(size=11, color=_color(str(mode))),
            hovertemplate=f"SAE %{{text}}<br>mode {mode}<br>{x} %{{x:.3g}}<br>{y} %{{y:.4g}}<extra></extra>",
        )
    fig.update_layout(title=f"{y} vs {x} (Pareto)", xaxis_title=x, yaxis_title=y, yaxis_type="log")
    return fig


def gap_distribution(gaps: Mapping[str, np.ndarray]) -> go.Figure | None:
    """Per-token amortization gap F(z_amort) − F(z*) per SAE (box with all points' quantiles)."""
    if not gaps:
        return None
    fig = go.Figure()
    for sae, g in gaps.items():
        fig.add_box(y=np.asarray(g, dtype=np.float64), name=sae, boxmean=True,
                    hovertemplate=f"{sae}<br>gap %{{y:.4g}}<extra></extra>")
    fig.update_layout(title="Amortization gap per token: F(z_amortized) − F(z*)", yaxis_title="objective gap",
                      showlegend=False)
    return fig


def cost_quality(df: pd.DataFrame, cost: str = "flops_per_token", quality: str = "nmse") -> go.Figure | None:
    """FLOPs per token vs NMSE, per mode (log-scale cost)."""
    if df.empty or cost not in df.columns or quality not in df.columns:
        return None
    fig = go.Figure()
    for mode, sub in df.groupby("mode", sort=False):
        fig.add_scatter(
            x=sub[cost], y=sub[quality], mode="markers", name=str(mode), text=sub["sae"],
            marker=dict(size=11, color=_color(str(mode))),
            hovertemplate=f"SAE %{{text}}<br>mode {mode}<br>{cost} %{{x:.3g}}<br>{quality} %{{y:.4g}}<extra></extra>",
        )
    fig.update_layout(title=f"Cost vs quality: {quality} against {cost}", xaxis_title=cost, yaxis_title=quality,
                      xaxis_type="log")
    return fig


def metric_lines(df: pd.DataFrame, metrics: Sequence[str], x: str, group: str, x_title: str,
                 log_x: bool = False) -> go.Figure | None:
    """Metric vs `x`, one line per value of `group`; a dropdown picks the metric."""
    metrics = [m for m in metrics if m in df.columns and df[m].notna().any()]
    if df.empty or x not in df.columns or group not in df.columns or not metrics:
        return None
    groups = list(dict.fromkeys(df[group]))
    fig = go.Figure()
    for mi, metric in enumerate(metrics):
        for g in groups:
            sub = df[df[group] == g].sort_values(x)
            fig.add_scatter(
                x=sub[x], y=sub[metric], mode="lines+markers", name=str(g), visible=mi == 0,
                line=dict(color=_color(str(g))),
                hovertemplate=f"{g}<br>{x_title} %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>",
            )
    n = len(groups)
    visible = [[j // n == i for j in range(len(metrics) * n)] for i in range(len(metrics))]
    fig.update_layout(
        title=f"{metrics[0]} vs {x_title}", xaxis_title=x_title, yaxis_title=metrics[0],
        xaxis_type="log" if log_x else None,
        updatemenus=_dropdown(metrics, visible, [{"title.text": f"{m} vs {x_title}", "yaxis.title.text": m} for m in metrics]),
    )
    return fig


def semi_curves(df: pd.DataFrame, metrics: Sequence[str], steps: str = "semi_steps") -> go.Figure | None:
    """Metric vs semi-amortized steps K, one line per SAE; a dropdown picks the metric."""
    return metric_lines(df, metrics, steps, "sae", "semi-amortized steps K")


def step_curves(df: pd.DataFrame, metrics: Sequence[str], step: str = "step") -> go.Figure | None:
    """Metric vs training step of the SAE checkpoints, one line per mode; a dropdown picks the metric."""
    return metric_lines(df, metrics, step, "mode", "training step")


def _knob_label(knob, value) -> str:
    """Hover text for a frontier point's knob: "λ 0.5", "k 16", or "the encoder as trained" when it has none."""
    if not isinstance(knob, str) or pd.isna(value):
        return "the encoder as trained"
    return f"{knob} {value:.4g}"


def frontier_plot(points: pd.DataFrame) -> go.Figure | None:
    """NMSE vs L0 (log–log), one line per mode over its knob, the encoder's point starred; a dropdown picks the SAE."""
    if points.empty or not {"sae", "mode", "l0", "nmse", "encoder_point"} <= set(points.columns):
        return None
    saes = list(dict.fromkeys(points["sae"]))
    fig, owner = go.Figure(), []
    for sae in saes:
        pts = points[points["sae"] == sae]
        for mode, sub in pts.groupby("mode", sort=False):
            sub = sub.sort_values("l0")
            fig.add_scatter(
                x=sub["l0"], y=sub["nmse"], mode="lines+markers", name=str(mode), visible=sae == saes[0],
                line=dict(color=_color(str(mode))), customdata=[_knob_label(k, v) for k, v in zip(sub["knob"], sub["value"])],
                hovertemplate=f"{mode}<br>%{{customdata}}<br>L0 %{{x:.3g}}<br>NMSE %{{y:.4g}}<extra></extra>",
            )
            owner.append(sae)
        enc = pts[pts["encoder_point"].astype(bool)]
        fig.add_scatter(x=enc["l0"], y=enc["nmse"], mode="markers", name="encoder (as trained)",
                        visible=sae == saes[0], marker=dict(symbol="star", size=16, color="black"),
                        hovertemplate="encoder<br>L0 %{x:.3g}<br>NMSE %{y:.4g}<extra></extra>")
        owner.append(sae)
    visible = [[o == sae for o in owner] for sae in saes]
    unplotted = points[~(points["l0"] > 0)]
    if len(unplotted):  # a log axis has no place for L0 = 0 (all codes zero): say so instead of dropping them
        which = ", ".join(sorted({f"{s} / {m}" for s, m in zip(unplotted["sae"], unplotted["mode"])}))
        fig.add_annotation(text=f"{len(unplotted)} point(s) at L0 = 0 not drawn on the log axis ({which}); see the "
                           "table of frontier points", xref="paper", yref="paper", x=0, y=-0.18, showarrow=False,
                           xanchor="left", font=dict(size=11))
    fig.update_layout(
        title=f"Density frontier — {saes[0]}", xaxis_title="L0", yaxis_title="NMSE", xaxis_type="log",
        yaxis_type="log", updatemenus=_dropdown(saes, visible, [{"title.text": f"Density frontier — {s}"} for s in saes]),
    )
    return fig
