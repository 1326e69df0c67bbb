"""The built-in inference modes as plain data — name, what each needs, what it does — importable without torch, so
`saeamort modes` answers at once. The registry (`saelens_amort.inference`) stays the source of truth for running a
mode; a test keeps this catalog equal to what the built-in modes register."""

from __future__ import annotations

from typing import NamedTuple


class ModeInfo(NamedTuple):
    name: str
    needs_lambda: bool
    needs_k: bool
    needs_sae: bool
    summary: str


BUILTIN_MODES = (
    ModeInfo("amortized", False, False, True, "the SAE's own encoder: exactly sae.encode(x)"),
    ModeInfo("unamortized", True, False, False, "non-negative lasso at λ from zero, solved to a certified duality "
                                                "gap (working-set solver; dense FISTA or ISTA on request)"),
    ModeInfo("semi", True, False, False, "K FISTA steps at λ warm-started from the encoder's code"),
    ModeInfo("omp", False, True, False, "non-negative orthogonal matching pursuit, k atoms per row"),
    ModeInfo("mp", False, True, False, "matching pursuit, k atoms per row"),
    ModeInfo("ksparse", False, False, False, "min ½‖x′ − uA‖² with u ≥ 0 and at most k atoms per row (default k: the "
                                             "encoder's own per-row L0), from OMP"),
    ModeInfo("semi_ksparse", False, False, True, "the same k-sparse problem started from the encoder's code: never "
                                                 "worse than the encoder, same per-row L0"),
)
