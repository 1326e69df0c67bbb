"""The eval's λ per SAE and λ-mode (DESIGN §3, §9): the mode's codes' density on the first `--calib-tokens` rows
matches the encoder's, with the mode run exactly as evaluated (same steps, tol, solver; semi from the encoder's
code of the same batches). The encoder's codes are taken exactly as the eval's amortized mode computes them — batch
by batch, `--batch-size` rows at a time from the start of the stream — since a batch-dependent encoder
(training-form BatchTopK) codes a row differently in another batch.

A dense-rate target needs a dense latent: when no amortized latent fires on at least τ of the calibration rows,
'dense@τ' names no density to match, and λ matches the encoder's mean L0 instead (said in the rows' `skipped`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.inference import Calibration, calibrate_lambda, get_mode, infer
from saelens_amort.inference.calibrate import dense_rate
from saelens_amort.runners.eval_protocol import Variant


class EvalLambda(NamedTuple):
    calibration: Calibration
    target: str
    """The target λ was calibrated to ('l0' when the requested dense target had no dense latent)."""
    note: str | None
    """Why the requested target was replaced (None when it was not)."""
    seconds: float = 0.0
    """Wall time the calibration took (reported apart from the solves')."""


def amortized_in_batches(x: Float[Tensor, "N d_in"], sae, batch_size: int) -> Float[Tensor, "N d_sae"]:
    """The amortized codes of x's rows, encoded `batch_size` rows at a time (as the eval's batches are)."""
    parts = [infer(x[i : i + batch_size], sae, "amortized").codes for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts)


def calibrate_eval_lambda(x: Float[Tensor, "N d_in"], sae, target: str, calib_rows: int, batch_size: int,
                          mode: str = "unamortized", reference: Tensor | None = None, **options: Any) -> EvalLambda:
    """λ for `mode` (run with `options`, calibrate_lambda's) on the first `calib_rows` rows of x, the first rows of
    the eval's stream; x holds them and the rest of the batch the last of them falls in (see the module docstring).
    `reference`: the amortized codes of those rows when already computed."""
    start = time.perf_counter()
    if reference is None:
        reference = amortized_in_batches(x, sae, batch_size)[:calib_rows]
    note = None
    if target.startswith("dense@"):
        tau = float(target.split("@", 1)[1])
        if dense_rate(reference, tau) <= 0:
            note = (f"no amortized latent fires on ≥ {tau:g} of the {calib_rows} calibration rows, so {target} is no "
                    "target; λ matches the encoder's mean L0 instead")
            target = "l0"
    if get_mode(mode).encoder_start:  # start from the encoder's code of the eval's batches, as evaluated
        options = {**options, "init": reference}
    cal = calibrate_lambda(x[:calib_rows], sae, mode, target=target, strict=False, reference=reference, **options)
    return EvalLambda(cal, target, note, time.perf_counter() - start)


def calibration_rows_to_load(calib_rows: int, batch_size: int, n_tokens: int) -> int:
    """Rows from the start of the stream that cover the calibration slice in whole eval batches."""
    return min(n_tokens, -(-calib_rows // batch_size) * batch_size)


def calibrate_variants(sae, store, cfg, variants: list[Variant]) -> dict[str, Any] | None:
    """The λs of one SAE's eval (`cfg` an EvalConfig): 'z*' → the unamortized mode's (the λ of the shared policy, of
    z* and of the modes without a λ), and with per-mode λ, label → the EvalLambda of each λ-variant, calibrated as
    it runs (variants that solve alike share one); empty when no variant needs a λ. Under several ranks (torchrun,
    --workers) every rank calls it: the calibrations are dealt out over the ranks and the result is rank 0's (None
    on the others)."""
    from saelens_amort import distributed as dist

    if all(v.mode == "amortized" for v in variants):
        return {} if dist.is_main() else None
    unamortized = next((v for v in variants if v.mode == "unamortized"), Variant("unamortized", "unamortized"))
    unamortized = replace(unamortized, refit=False)  # z*'s λ: the unamortized solve's own density
    z_key = unamortized.calibration_key
    jobs = {z_key: unamortized}  # one calibration per distinct solve, run by the variant that first asks for it
    if not cfg.shared_lambda:
        for v in variants:
            if get_mode(v.mode).needs_lambda:
                jobs.setdefault(v.calibration_key, v)
    mine = [key for i, key in enumerate(jobs) if i % dist.world() == dist.rank()]
    done: dict[tuple, EvalLambda] = {}
    if mine:
        x = store.load(calibration_rows_to_load(cfg.calib_tokens, cfg.batch_size, store.n_tokens)).acts.to(cfg.device)
        reference = amortized_in_batches(x, sae, cfg.batch_size)[: cfg.calib_tokens]
        args = (x, sae, cfg.resolved_target, cfg.calib_tokens, cfg.batch_size)
        done = {key: calibrate_eval_lambda(*args, mode=jobs[key].mode, reference=reference,
                                           **jobs[key].calibration_options) for key in mine}
    parts = dist.gather(done)
    if parts is None:
        return None
    by_solve = {key: value for part in parts for key, value in part.items()}
    found = {"z*": by_solve[z_key]}
    if not cfg.shared_lambda:
        for v in variants:
            if get_mode(v.mode).needs_lambda:
                found[v.label] = by_solve[v.calibration_key]
    return found
