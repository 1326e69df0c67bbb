"""Runner for `saeamort frontier`: each mode's NMSE (and CE/KL) against L0 over its density knob, and the price of
amortization read off the frontiers at the encoder's point (DESIGN §9).

Orchestration only (grids and interpolation: `metrics.frontier`). Per SAE: λ_max and the encoder's L0 come from the
calibration slice; then every knob value of every mode runs on the same streamed batches (memory does not grow with
--tokens). Knobs: λ for L1 modes, k for k-sparse modes (`MODE_KNOBS`), and the encoder's own where it has one (TopK
k; a JumpReLU threshold scale). Unamortized solves warm-start along the λ path (same optimum, fewer iterations),
except under the paper protocol, whose solves run exactly their steps from zero as eval's do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor

from saelens_amort.atomic import write_atomic
from saelens_amort.devices import on_device
from saelens_amort.inference import infer
from saelens_amort.memory import release_memory
from saelens_amort.metrics import make_metric, metric_batch, splice_reference, spliced_metrics
from saelens_amort.metrics.frontier import k_grid, lambda_grid, lambda_max, price
from saelens_amort.provenance import provenance
from saelens_amort.run_folder import check_run_folder, record_run
from saelens_amort.runners.frontier_config import FrontierConfig
from saelens_amort.runners.records import json_records
from saelens_amort.runners.eval_inputs import SpliceTokens, default_specs, load_eval_sae, load_inputs
from saelens_amort.saes import Dictionary

logger = logging.getLogger(__name__)

COMMAND = "frontier"
MODE_KNOBS = {"unamortized": "lam", "semi": "lam", "omp": "k", "mp": "k", "ksparse": "k", "semi_ksparse": "k"}
"""The density knob of each mode that has one (a new k-sparse mode is one more entry)."""


class Curve(NamedTuple):
    """One frontier to trace: `mode` at each value of its `knob` ('lam', 'k', 'threshold_scale'), with `options`."""

    mode: str
    knob: str | None
    values: tuple
    options: dict[str, Any] | None = None
    encoder_value: Any = None
    """The value at which the amortized curve is the SAE as trained (its operating point)."""


def encoder_knob(sae) -> str | None:
    """'k' for a TopK encoder, 'threshold_scale' for a JumpReLU one, None otherwise."""
    if isinstance(getattr(sae.cfg, "k", None), int) and hasattr(getattr(sae, "activation_fn", None), "k"):
        return "k"
    if isinstance(getattr(sae, "threshold", None), torch.Tensor):
        return "threshold_scale"
    return None


@contextmanager
def encoder_at(sae, knob: str | None, value: Any) -> Iterator[None]:
    """The SAE with its own knob set to `value` for the duration (restored also on exceptions)."""
    if knob == "k":
        old = sae.cfg.k
        sae.cfg.k = sae.activation_fn.k = int(value)
        try:
            yield
        finally:
            sae.cfg.k = sae.activation_fn.k = old
    elif knob == "threshold_scale" and value != 1.0:
        old = sae.threshold.detach().clone()
        with torch.no_grad():
            sae.threshold.mul_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                sae.threshold.copy_(old)
    else:
        yield


def plan_curves(sae, dictionary: Dictionary, x_cal: Tensor, cfg: FrontierConfig) -> tuple[list[Curve], dict[str, str]]:
    """The curves of one SAE (knob grids from the calibration slice) and the modes skipped, with the reason."""
    encoder_l0 = float((infer(x_cal, sae, "amortized").codes > 0).sum(-1).float().mean())
    lams = cfg.lambdas or lambda_grid(lambda_max(dictionary.target(x_cal), dictionary.atoms), cfg.n_lambdas,
                                      cfg.lambda_ratio)
    ks = tuple(sorted(set(cfg.ks))) or k_grid(encoder_l0, cfg.k_multipliers, dictionary.d_sae)  # each value once
    solve = {v.label: v.solve_options for v in cfg.eval.variants()}  # the protocol's steps / solver / tolerance
    curves, skipped = [], {}
    for mode in cfg.eval.resolved_modes:
        if mode == "amortized":
            knob = encoder_knob(sae)
            if knob == "k":
                native = int(sae.cfg.k)
                grid = cfg.ks or k_grid(native, cfg.k_multipliers, dictionary.d_sae)
                values = tuple(sorted({*grid, native}))
            elif knob == "threshold_scale":
                native, values = 1.0, tuple(sorted({*cfg.threshold_scales, 1.0}))
            else:
                native, values = None, (None,)
            curves.append(Curve(mode, knob, values, {}, native))
        elif MODE_KNOBS.get(mode) == "lam":
            curves.append(Curve(mode, "lam", tuple(sorted(set(lams), reverse=True)), solve[mode]))
        elif MODE_KNOBS.get(mode) == "k":
            curves.append(Curve(mode, "k", tuple(ks)))
        else:
            skipped[mode] = "no known density knob (frontier.MODE_KNOBS)"
    return curves, skipped


def _run(x: Tensor, sae, curve: Curve, value: Any, init: Tensor | None):
    if curve.mode == "amortized":
        with encoder_at(sae, curve.knob, value):
            return infer(x, sae, "amortized")
    knob = {curve.knob: value}
    if init is not None:
        knob["init"] = init
    return infer(x, sae, curve.mode, **knob, **(curve.options or {}))


def trace(batches: Iterable[Tensor], sae, curves: list[Curve]) -> list[dict]:
    """One row per curve × knob value: L0, NMSE, FVU (and the mean objective at λ for λ-curves) over all batches."""
    dictionary = Dictionary.of(sae)
    acc = {(c.mode, v): (make_metric("reconstruction"), make_metric("sparsity")) for c in curves for v in c.values}
    objective = {key: 0.0 for key in acc}
    n_rows = 0
    for x in batches:
        n_rows += x.shape[0]
        for c in curves:
            warm = None
            for v in c.values:
                res = _run(x, sae, c, v, warm)
                # along the λ path (the same optimum, fewer iterations) when the solve runs to its tolerance
                warm = res.codes if c.mode == "unamortized" and (c.options or {}).get("tol") != 0 else None
                mb = metric_batch(x, res, dictionary)
                for m in acc[(c.mode, v)]:
                    m.update(mb)
                if c.knob == "lam":
                    objective[(c.mode, v)] += float(res.objective.double().sum())
    rows = []
    for c in curves:
        for v in c.values:
            rec, spa = (m.compute() for m in acc[(c.mode, v)])
            rows.append({"mode": c.mode, "knob": c.knob, "value": None if v is None else float(v),
                         "encoder_point": c.mode == "amortized" and v == c.encoder_value,
                         "l0": spa["l0"], "nmse": rec["nmse"], "fvu": rec["fvu"],
                         "objective": objective[(c.mode, v)] / max(n_rows, 1) if c.knob == "lam" else None})
    return rows


def splice_rows(model, sae, hook: str, toks: SpliceTokens, curves: list[Curve]) -> list[dict]:
    """Spliced CE / CE recovered / KL (without the error term) at every curve × knob value."""
    ref = splice_reference(model, toks.tokens, hook, toks.lengths)
    rows = []
    for c in curves:
        for v in c.values:
            if c.mode == "amortized":
                with encoder_at(sae, c.knob, v):
                    sp = spliced_metrics(model, sae, "amortized", toks.tokens, hook, lam=None, keep_error=False,
                                         reference=ref)
            else:
                sp = spliced_metrics(model, sae, c.mode, toks.tokens, hook, keep_error=False, reference=ref,
                                     **{"lam": None, c.knob: v, **(c.options or {})})
            rows.append({"ce_spliced": sp.ce_spliced, "ce_recovered": sp.ce_recovered, "kl": sp.kl})
    return rows


def prices(points: pd.DataFrame) -> pd.DataFrame:
    """Per SAE × mode: the price at the encoder's point (metrics.frontier.price)."""
    rows = []
    for sae, pts in points.groupby("sae", sort=False):
        enc = pts[pts["encoder_point"].astype(bool)]
        if enc.empty:
            continue
        e_l0, e_nmse = float(enc["l0"].iloc[0]), float(enc["nmse"].iloc[0])
        for mode, curve in pts[pts["mode"] != "amortized"].groupby("mode", sort=False):
            p = price(curve["l0"].tolist(), curve["nmse"].tolist(), e_l0, e_nmse)
            rows.append({"sae": sae, "mode": mode, "encoder_l0": e_l0, "encoder_nmse": e_nmse, **p._asdict()})
    return pd.DataFrame(rows)


def run_frontier(cfg: FrontierConfig, out: Path, *, overwrite: bool = False,
                 progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`saeamort frontier`: trace every SAE's frontiers and write frontier.{parquet,csv,json} and report.html."""
    from saelens_amort.runners.frontier_report import build_frontier_report

    cfg = replace(cfg, eval=on_device(cfg.eval))
    ev = cfg.eval
    out = Path(out)
    check_run_folder(out, COMMAND, cfg.as_json(), overwrite=overwrite)
    specs = ev.saes or default_specs(ev)
    inputs = load_inputs(ev, specs, out, progress=progress, check_sae=cfg.check_sae)
    use_splice = inputs.splice_toks is not None and "splice" in ev.metrics
    rows, skipped = [], {}
    for i, spec in enumerate(specs):
        logger.info("[%d/%d] frontier of %s", i + 1, len(specs), spec)
        sae = load_eval_sae(spec, inputs.world, ev.device, inputs.sae_dtype)
        x_cal = inputs.store.load(ev.calib_tokens).acts.to(ev.device)
        curves, skip = plan_curves(sae, Dictionary.of(sae), x_cal, cfg)
        skipped.update({f"{spec} {mode}": why for mode, why in skip.items()})
        batches = (b.acts.to(ev.device) for b in inputs.store.iter_batches(ev.batch_size))
        points = trace(batches, sae, curves)
        if use_splice:
            for p, sp in zip(points, splice_rows(inputs.model, sae, inputs.hook, inputs.splice_toks, curves)):
                p.update(sp)
        rows += [{"sae": spec, "architecture": sae.cfg.architecture(), **p} for p in points]
        del sae, x_cal
        release_memory()  # as eval does: what this SAE's solves freed goes back to the OS before the next SAE
    points_df = pd.DataFrame(rows)
    price_df = prices(points_df)
    meta = {"config": cfg.as_json(), "hook_name": inputs.hook, "provenance": provenance(), "skipped": skipped,
            "prices": json_records(price_df)}
    record_run(out, COMMAND, cfg.as_json())
    write_atomic(out / "frontier.parquet", lambda p: points_df.to_parquet(p, index=False))
    write_atomic(out / "frontier.csv", lambda p: points_df.to_csv(p, index=False))
    build_frontier_report(out / "report.html", points_df, price_df, meta)
    write_atomic(out / "frontier.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    return points_df, price_df
