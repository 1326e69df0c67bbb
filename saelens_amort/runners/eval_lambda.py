"""The eval's one λ per SAE (DESIGN §3): the unamortized codes' density on the first `--calib-tokens` rows matches
the encoder's, with the encoder's codes taken exactly as the eval's amortized mode computes them — batch by batch,
`--batch-size` rows at a time from the start of the stream — since a batch-dependent encoder (training-form
BatchTopK) codes a row differently in another batch.

A dense-rate target needs a dense latent: when no amortized latent fires on at least τ of the calibration rows,
'dense@τ' names no density to match, and λ matches the encoder's mean L0 instead (said in the rows' `skipped`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.inference import Calibration, calibrate_lambda, infer
from saelens_amort.inference.calibrate import dense_rate


class EvalLambda(NamedTuple):
    calibration: Calibration
    target: str
    """The target λ was calibrated to ('l0' when the requested dense target had no dense latent)."""
    note: str | None
    """Why the requested target was replaced (None when it was not)."""


def amortized_in_batches(x: Float[Tensor, "N d_in"], sae, batch_size: int) -> Float[Tensor, "N d_sae"]:
    """The amortized codes of x's rows, encoded `batch_size` rows at a time (as the eval's batches are)."""
    parts = [infer(x[i : i + batch_size], sae, "amortized").codes for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts)


def calibrate_eval_lambda(x: Float[Tensor, "N d_in"], sae, target: str, calib_rows: int, batch_size: int) -> EvalLambda:
    """λ for the unamortized mode on the first `calib_rows` rows of x, the first rows of the eval's stream; x holds
    them and the rest of the batch the last of them falls in (see the module docstring)."""
    reference = amortized_in_batches(x, sae, batch_size)[:calib_rows]
    note = None
    if target.startswith("dense@"):
        tau = float(target.split("@", 1)[1])
        if dense_rate(reference, tau) <= 0:
            note = (f"no amortized latent fires on ≥ {tau:g} of the {calib_rows} calibration rows, so {target} is no "
                    "target; λ matches the encoder's mean L0 instead")
            target = "l0"
    cal = calibrate_lambda(x[:calib_rows], sae, "unamortized", target=target, strict=False, reference=reference)
    return EvalLambda(cal, target, note)


def calibration_rows_to_load(calib_rows: int, batch_size: int, n_tokens: int) -> int:
    """Rows from the start of the stream that cover the calibration slice in whole eval batches."""
    return min(n_tokens, -(-calib_rows // batch_size) * batch_size)
