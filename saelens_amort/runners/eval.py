"""Runner for `saeamort eval`: every SAE × inference mode on the same streamed activations, at matched density.

Orchestration only (what is compared: `eval_protocol`). Per SAE and λ-mode: λ is calibrated on a calibration slice
so that mode's density, run exactly as evaluated, matches the encoder's (DESIGN §3, §9); with `--lambda shared` (and
the paper protocol) every λ-mode runs at the unamortized mode's λ. Modes without a λ (the encoder, k-sparse) report
F at the unamortized mode's λ. The amortization gap of a row is F(z_row; λ_row) − F(z*; λ_row), z* the converged
unamortized code at that row's λ. Activations stream batch by batch through the metric accumulators (memory does not
grow with --tokens); spliced CE/KL runs on a few whole sequences rebuilt from the store's rows.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from saelens_amort.provenance import provenance
from saelens_amort.atomic import write_atomic
from saelens_amort.devices import on_device
from saelens_amort.memory import release_memory
from saelens_amort.run_folder import check_run_folder
from saelens_amort.runners.eval_inputs import SpliceTokens, default_specs, load_eval_sae, load_inputs
from saelens_amort.runners.eval_partials import COMMAND, PARTIAL_DIR, load_partials, save_partial
from saelens_amort.runners.eval_config import EvalConfig
from saelens_amort.runners.eval_splice import SpliceCodes, splice_columns
from saelens_amort.runners.eval_stages import Stages
from saelens_amort.runners.eval_protocol import density_columns, density_metric, price_columns
from saelens_amort.runners.records import json_records

if TYPE_CHECKING:
    from saelens_amort.runners.eval_workers import Workers

logger = logging.getLogger(__name__)

CALIBRATION_TOL = 0.05
"""λ is calibrated to the target density within this relative tolerance (calibrate_lambda's default)."""
GAP_SAMPLE = 4096
"""Per-token gaps kept per SAE for the report's distribution plot."""
REFERENCE_FINISH_ITER = 200
"""z*: rows the unamortized budget left uncertified are solved again (fp64, from zero) with this budget
(`_reference`)."""
REFERENCE_WS_FACTOR = 4
"""… and a working set this many times the mode's (toy/standard, 8 192 rows: 22 left at its semi λ and 12 at its
unamortized λ; from zero in fp64 with 2× the working set 21 and 12 of them certified, with 4× all; their fp32 codes
continued with the mode's own, as before, 8 and 9 — z* 99.83 / 99.96 % → 100 / 100 % of rows, in the same time)."""
COUNT_KEYS = ("n_tokens", "n_train", "n_test")
"""Counts that several metric families report: each family's goes in its own column, '<family>/<count>'."""


def check_out_dir(out: Path, cfg: EvalConfig, overwrite: bool) -> None:
    """Refuse an --out that holds another run (unless overwrite); the same config resumes."""
    check_run_folder(out, COMMAND, cfg.as_json(), overwrite=overwrite)


def evaluate_sae(spec: str, sae, model, store, hook: str, cfg: EvalConfig,
                 splice_toks: SpliceTokens | None, world=None, stages: Stages | None = None) -> tuple[list[dict], dict]:
    """All variants of one SAE: rows for the results table and artifacts for the report. `model` is None for an
    activation-only evaluation; `world` (a ground-truth World) adds the truth metrics; `stages` times each stage and
    draws the SAE's progress bar."""
    stages = stages or Stages()
    from saelens_amort import distributed as dist

    n_rows = min(store.n_tokens, cfg.tokens)  # a given store (--activations) may hold more rows than asked for
    with stages.sae(spec, len(dist.block(-(-n_rows // cfg.batch_size)))):  # this rank's batches
        return _evaluate_sae(spec, sae, model, store, hook, cfg, splice_toks, world, stages, n_rows)


def _evaluate_sae(spec: str, sae, model, store, hook: str, cfg: EvalConfig, splice_toks: SpliceTokens | None,
                  world, stages: Stages, n_rows: int) -> tuple[list[dict], dict]:
    from saelens_amort import distributed as dist
    from saelens_amort.inference import get_mode, infer
    from saelens_amort.inference.flops import add_info
    from saelens_amort.metrics import make_metric, metric_batch
    from saelens_amort.runners.eval_lambda import calibrate_variants
    from saelens_amort.saes import Dictionary

    variants = cfg.variants()
    dictionary = Dictionary.of(sae)
    warm = {v.label for v in variants if get_mode(v.mode).encoder_start}  # start from the batch's encoder code
    # dealt out over the ranks, then broadcast: every rank solves at the same λs
    with stages.stage("calibrate λ"):
        found = dist.broadcast(calibrate_variants(sae, store, cfg, variants))
    ref = found.get("z*")
    lam_of = {v.label: (found[v.label].calibration.lam if v.label in found else ref.calibration.lam if ref else None)
              for v in variants}
    ref_lam = ref.calibration.lam if ref else None
    label_names = store.label_names
    families = [m for m in cfg.metrics if m not in ("splice", "truth")]  # truth: below, from the world
    metrics = {v.label: {name: (make_metric(name, label_names=label_names) if name in ("probes", "absorption")
                                else make_metric(name)) for name in families} for v in variants}
    if world is not None:
        for v in variants:
            metrics[v.label]["truth"] = make_metric("truth", true_atoms=world.structure.atoms,
                                                    parent=world.structure.parent, sae_atoms=dictionary.atoms.cpu())
    truths = world.iter_truth(cfg.batch_size) if world is not None else itertools.repeat(None)
    gaps: list[np.ndarray] = []
    stars = sorted({lam for lam in lam_of.values() if lam is not None})
    converged = {key: [0, 0] for key in [*metrics, *stars]}  # rows whose stopping rule held, rows (z* by its λ)
    objectives: dict[str, str] = {}
    mine = dist.block(-(-n_rows // cfg.batch_size))  # this rank's contiguous batches
    use_splice = splice_toks is not None and "splice" in cfg.metrics
    splice_codes = SpliceCodes(splice_toks.store_rows if use_splice else 0)  # the splice rows' codes, not solved twice
    for i, (batch, truth) in enumerate(zip(store.iter_batches(cfg.batch_size), truths)):
        if i * cfg.batch_size >= n_rows:
            break
        if i not in mine:
            continue
        keep = n_rows - i * cfg.batch_size
        if keep < batch.n_rows:
            batch, truth = batch.rows(0, keep), None if truth is None else truth[:keep]
        x = batch.acts.to(cfg.device)
        with stages.stage("solve amortized"):
            encoded = infer(x, sae, "amortized", lam=ref_lam) if warm or any(
                v.mode == "amortized" and not v.options for v in variants) else None
        results = {}
        for v in variants:
            lam = lam_of[v.label]
            if v.mode == "unamortized" and not v.options and lam in stars:
                continue  # it is z* at its λ, solved below from zero
            if v.mode == "amortized" and not v.options and encoded is not None:
                results[v.label] = encoded
                continue
            with stages.stage(f"solve {v.label}"):
                # an encoder-started mode starts from the amortized code of this very batch, whose time and FLOPs
                # count here too
                if v.label in warm:
                    res = infer(x, sae, v.mode, lam=lam, init=encoded.codes, **v.options)
                    results[v.label] = res._replace(seconds=res.seconds + encoded.seconds,
                                                    info=add_info(res.info, encoded.info))
                else:
                    results[v.label] = infer(x, sae, v.mode, lam=lam, **v.options)
        with stages.stage("solve z*"):
            solved, star = {}, {}  # the unamortized mode's solve and z* at each row's λ
            for lam in stars:
                solved[lam], star[lam] = _reference(x, sae, lam)
        for v in variants:
            if v.label not in results:
                results[v.label] = solved[lam_of[v.label]]
        results = {v.label: results[v.label] for v in variants}
        for v in variants:  # what each row solved (the encoder's codes solve nothing)
            unstated = "encoder" if v.mode == "amortized" else "not stated by the mode"
            objectives.setdefault(v.label, str(results[v.label].info.get("objective", unstated)))
        splice_codes.keep(i * cfg.batch_size, results, encoded)
        labels = batch.labels if label_names else None
        for key, res in [*results.items(), *star.items()]:
            converged[key] = [converged[key][0] + int(res.converged.sum()), converged[key][1] + len(res.codes)]
        for label, res in results.items():
            lam = lam_of[label]
            mb = metric_batch(x, res, dictionary, labels=labels, token_ids=batch.token_ids, doc_ids=batch.doc_ids,
                              objective_star=star[lam].objective if lam in star else None)._replace(truth=truth)
            for name, m in metrics[label].items():
                with stages.stage(f"metric {name}"):
                    m.update(mb)
        if ref_lam in star and "amortized" in results and sum(map(len, gaps)) < GAP_SAMPLE:
            gaps.append((results["amortized"].objective - star[ref_lam].objective).cpu().numpy())
        stages.advance()

    # each rank merges and computes the metrics of its share of the variants (dealt out round-robin)
    owned = {label: _compute(families, stages) for label, families in dist.deal_metrics(metrics).items()}
    all_computed, all_gaps, all_converged = dist.gather(owned), dist.gather(gaps), dist.gather(converged)
    all_objectives = dist.gather(objectives)
    if not dist.is_main():
        return [], {"freqs": {}, "gap": np.zeros(0)}
    computed = {label: c for part in all_computed for label, c in part.items()}
    gaps = [g for part in all_gaps for g in part]
    objectives = {k: v for part in all_objectives for k, v in part.items()}
    counts = {key: np.sum([part[key] for part in all_converged], axis=0) for key in converged}
    converged_frac = {key: float(c / n) if n else None for key, (c, n) in counts.items()}
    with stages.stage("splice"):
        splice = splice_columns(model, sae, hook, splice_toks, variants, lam_of, splice_codes,
                                cfg.batch_size) if use_splice else {}
    rows, freqs = [], {}
    for v in variants:
        lam = lam_of[v.label]
        own = found.get(v.label, ref)
        cal = own.calibration if own else None
        row: dict[str, Any] = {"sae": spec, "mode": v.label, "inference_mode": v.mode, "semi_steps": v.steps,
                               "refit": v.refit, "objective": objectives.get(v.label),
                               "architecture": sae.cfg.architecture(),
                               "sae_dtype": str(sae.W_dec.dtype).removeprefix("torch."),  # as run, not as asked
                               "protocol": cfg.protocol,
                               "lambda_policy": "shared" if cfg.shared_lambda else "per-mode", "lam": lam,
                               "lambda_calibrated_for": ("this mode" if v.label in found else "unamortized")
                               if cal else None,
                               "lambda_target": own.target if own else cfg.resolved_target,
                               "lambda_target_value": cal.target_value if cal else None,
                               "lambda_achieved": cal.achieved if cal else None,
                               "lambda_calib_rows": cal.n_rows if cal else None,
                               "calibration_seconds": own.seconds if own else None,
                               "converged_frac": converged_frac[v.label],
                               "ref_converged_frac": converged_frac.get(lam)}
        skipped: dict[str, str] = {}
        if own is not None and own.note:
            skipped[f"{cfg.resolved_target} target"] = own.note
        for name, (values, why) in computed[v.label].items():
            if name == "sparsity":
                values = dict(values)
                freqs[(spec, v.label)] = values.pop("firing_frequency")
            row.update({f"{name}/{k}" if k in COUNT_KEYS else k: val for k, val in values.items()})
            skipped.update(why)
        columns, why = splice.get(v.label, ({}, {}))
        row.update(columns)
        skipped.update(why)
        if model is None and "splice" in cfg.metrics:
            skipped["splice"] = "activation-only evaluation (--activations): no language model to splice into"
        if v.label in found and abs(cal.achieved - cal.target_value) > CALIBRATION_TOL * cal.target_value:
            skipped["calibration"] = (f"no λ reaches the target {cal.target_value:.4g} on the calibration slice; "
                                      f"closest {cal.achieved:.4g} at λ={cal.lam:.3g}")
        row["skipped"] = "; ".join(f"{k}: {why}" for k, why in sorted(skipped.items()))
        rows.append(row)
    fallback = ref.calibration.target_value if ref else None
    density_columns(rows, density_metric(ref.target if ref else cfg.resolved_target), fallback)
    price = price_columns(rows)
    for row in rows:
        row.update(price)
    gap = np.concatenate(gaps)[:GAP_SAMPLE] if gaps else np.zeros(0)
    return rows, {"freqs": freqs, "gap": gap}


def _compute(families: dict[str, Any], stages: Stages) -> dict[str, tuple[dict, dict]]:
    """family → (its values, its skipped notes) of one variant's merged metrics; the sparsity family also carries
    the firing frequency per latent (for the report) under 'firing_frequency'."""
    out = {}
    for name, m in families.items():
        with stages.stage(f"metric {name}"):
            values = m.compute()
        if name == "sparsity":
            values = {**values, "firing_frequency": np.asarray(m.artifacts()["firing_frequency"])}
        out[name] = (values, dict(m.skipped))
    return out


def _reference(x, sae, lam: float, steps: int | None = None):
    """(the unamortized mode at λ, z* at λ): the mode solved from zero (`steps`: its budget, None its default), and
    z*, the same codes with the rows that budget left uncertified solved again, in fp64 from zero, for up to
    REFERENCE_FINISH_ITER iterations at the mode's tolerance on a working set REFERENCE_WS_FACTOR times the mode's.
    Those rows are the hard ones of near-parallel atoms, where the mode's narrow working set cycles: toy/standard at
    its semi λ, six such rows of 1 024 certify in 20–108 iterations on a 64-atom set, 225–2 475 on the mode's 16,
    and 2 of 6 in 200 more from their fp32 codes (the earlier continuation). Warm starts from an L1 row's codes at λ reach the same optimum
    but cost 3–17× more on the L1-trained toy SAEs (their dense starts make wide working sets: toy/standard, 1024
    rows, 9.6 s vs 2.9 s from zero at the semi λ); starting a small λ from a larger λ's optimum is 20–30 % cheaper,
    but then the unamortized row would no longer be the mode as a user runs it."""
    from saelens_amort.inference import infer, resolve_dictionary
    from saelens_amort.inference.working_set import solve_working_set

    solved = infer(x, sae, "unamortized", lam=lam, steps=steps)
    left = (~solved.converged).nonzero().squeeze(1)
    if left.numel() == 0:
        return solved, solved
    d = resolve_dictionary(sae)
    more = solve_working_set(d.target(x[left]).double(), d.atoms.double(), lam, max_iter=REFERENCE_FINISH_ITER,
                             tol=float(solved.info["tol"]), ws_size=REFERENCE_WS_FACTOR * int(solved.info["ws_size"]))
    codes, objective, converged = solved.codes.clone(), solved.objective.clone(), solved.converged.clone()
    codes[left] = d.to_sae_codes(more.u).to(codes)
    objective[left], converged[left] = more.objective.to(objective), more.converged
    return solved, solved._replace(codes=codes, objective=objective, converged=converged)


@dataclass
class Evaluation:
    """What `evaluate` produced: the table (one row per SAE × variant) and the report's raw material."""

    df: pd.DataFrame
    freqs: dict
    """(sae, variant) → firing frequency per latent."""
    gaps: dict
    """sae → per-token amortization gaps (a sample)."""
    hook: str
    store: Any


def run_eval(cfg: EvalConfig, out: Path, *, overwrite: bool = False, progress: bool = True,
             workers: "int | Workers" = 1) -> pd.DataFrame:
    """`saeamort eval` / `sweep-semi`: evaluate, then write results.{parquet,csv,json} and report.html in `out`;
    `workers` > 1 splits the batches over that many local CPU processes (or the `Workers` already started for this
    run; `eval_workers`)."""
    from saelens_amort import distributed as dist
    from saelens_amort.runners.eval_workers import Workers, check_workers, local_workers

    out = Path(out)
    try:
        cfg = on_device(cfg)
        check_workers(workers.n if isinstance(workers, Workers) else workers, cfg.device)
        dist.init(cfg.device)
        check_out_dir(out, cfg, overwrite)
    except BaseException:
        if isinstance(workers, Workers):  # started by the command line for this run: not needed after all
            workers.stop(wait=False)
        raise
    with local_workers(workers, cfg.as_json(), out, overwrite):
        stages = Stages(progress=progress)
        ev = evaluate(cfg, cfg.saes or default_specs(cfg), out, progress=progress, stages=stages)
        if dist.is_main():
            write_outputs(out, ev, cfg, stages=stages)
        dist.barrier()  # the other ranks return once the outputs exist
    return ev.df


def evaluate(cfg: EvalConfig, specs: tuple[str, ...], out: Path, *, progress: bool = True,
             stages: Stages | None = None) -> Evaluation:
    """Load everything (`load_inputs`) and evaluate the SAEs one at a time (one SAE in memory at once)."""
    from saelens_amort import distributed as dist

    stages = stages or Stages()
    model, hook, store, splice_toks, sae_dtype, world = load_inputs(cfg, specs, out, progress=progress, stages=stages)
    rows, freqs, gaps = [], {}, {}
    done = load_partials(out, cfg.as_json()) if dist.is_main() else {}  # results stay on rank 0; the others learn which
    finished = set(dist.broadcast(sorted(done)))
    for i, spec in enumerate(specs):
        if i in finished:  # finished by an interrupted earlier run of this config
            logger.info("[%d/%d] %s: already evaluated, reusing its results", i + 1, len(specs), spec)
            r, art = done.get(i, ([], {"freqs": {}, "gap": np.zeros(0)}))
        else:
            logger.info("[%d/%d] evaluating %s (%s)", i + 1, len(specs), spec,
                        ", ".join(v.label for v in cfg.variants()))
            with stages.stage("load SAEs"):
                sae = load_eval_sae(spec, world, cfg.device, sae_dtype)
            r, art = evaluate_sae(spec, sae, model, store, hook, cfg, splice_toks, world, stages)
            if dist.is_main():
                save_partial(out, cfg.as_json(), i, r, art)
            del sae
            release_memory()  # what this SAE's solves freed goes back to the OS before the next SAE
        rows += r
        freqs.update(art["freqs"])
        if art["gap"].size:
            gaps[spec] = art["gap"]
    return Evaluation(pd.DataFrame(rows), freqs, gaps, hook, store)


def lambdas_by_sae(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{SAE: {row mode: λ}} for the rows that ran at a λ (each λ-mode has its own under the fair protocol)."""
    out: dict[str, dict[str, float]] = {}
    for r in df.to_dict("records"):
        lam = r.get("lam")
        out.setdefault(r["sae"], {})
        if lam is not None and lam == lam:
            out[r["sae"]][r["mode"]] = float(lam)
    return out


def write_outputs(out: Path, ev: Evaluation, cfg: EvalConfig, *, extra_meta: dict | None = None,
                  extra_sections: list | None = None, stages: Stages | None = None) -> None:
    """results.parquet, results.csv, report.html, then results.json (last: its presence marks a complete run);
    results.json carries the run's stage timings when `stages` is given."""
    from saelens_amort.runners.eval_report import build_report

    df = ev.df
    meta = {"config": cfg.as_json(), "hook_name": ev.hook, "activation_store": str(ev.store.path),
            "lambda": lambdas_by_sae(df), "provenance": provenance(),
            **(extra_meta or {}), "rows": json_records(df)}
    write_atomic(out / "results.parquet", lambda p: df.to_parquet(p, index=False))
    write_atomic(out / "results.csv", lambda p: df.to_csv(p, index=False))
    with stages.stage("report") if stages else contextlib.nullcontext():
        build_report(out / "report.html", df, ev.freqs, ev.gaps, meta, extra_sections=extra_sections)
    if stages is not None:
        meta["timings"] = stages.as_json()
    write_atomic(out / "results.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=_json_default)))
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)
