"""The built-in inference modes and metric families as plain data — names, what each mode needs, what it does —
importable without torch, so `saeamort modes` and a misspelt --modes / --metrics answer at once. The registries
(`saelens_amort.inference`, `saelens_amort.metrics`) stay the source of truth for running them; a test keeps this
catalog equal to what the built-ins register."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from saelens_amort.errors import SaeAmortError


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
    ModeInfo("semi", True, False, False, "K FISTA steps at λ warm-started from the encoder's code (default K = 10)"),
    ModeInfo("omp", False, True, False, "non-negative orthogonal matching pursuit, k atoms per row"),
    ModeInfo("mp", False, True, False, "matching pursuit, k atoms per row"),
    ModeInfo("ksparse", False, False, False, "min ½‖x′ − uA‖² with u ≥ 0 and at most k atoms per row (default k: the "
                                             "encoder's own per-row L0), from OMP"),
    ModeInfo("semi_ksparse", False, False, True, "the same k-sparse problem started from the encoder's code "
                                                 "(refitted on its support; 5 steps by default): never worse than "
                                                 "the encoder, same per-row L0"),
)
SEMI_STEPS = 10
"""K, the `semi` mode's default number of FISTA steps from the encoder's code (DESIGN §3 allows the paper's 5–50).
Chosen so semi costs ≤ 15 encoder-equivalents of counted FLOPs on every toy SAE (benchmarks/bench_modes.py:
K = 10: 6.9–12.6; K = 30: 20–35). Measured at matched L0 (λ calibrated as semi at each K), NMSE of x' at K = 5 / 10 / 30: on the L1-trained
SAEs more steps help (toy/standard 0.055 / 0.050 / 0.028, gated 0.046 / 0.036 / 0.016), on the TopK family they
hurt, since the lasso's shrinkage grows with K (topk 0.049 / 0.067 / 0.060, batchtopk 0.042 / 0.058 / 0.093,
jumprelu 0.066 / 0.061 / 0.100, matryoshka 0.035 / 0.041 / 0.097). `--protocol paper` runs PAPER_SEMI_STEPS."""
PAPER_SEMI_STEPS = 30
"""K of the paper protocol: exactly 30 steps (tol 0)."""
SEMI_KSPARSE_STEPS = 5
"""The `semi_ksparse` mode's default iteration budget from the (polished) encoder code: ≤ 10 encoder-equivalents
of counted FLOPs on the toy SAEs (4.8–7.8), most of what convergence gives (toy, 2 048 rows, ‖x' − uA‖² / ‖x'‖²
at 5 steps vs 100: standard 0.0237 vs 0.0154, topk 0.0160 vs 0.0160, batchtopk 0.0214 vs 0.0193, jumprelu 0.0364 vs
0.0328; the encoder's: 0.086, 0.037, 0.034, 0.29)."""

BUILTIN_METRICS = ("reconstruction", "sparsity", "probes", "absorption", "gap", "cost", "splice", "truth")


def known_modes() -> list[str]:
    """The mode names a config may use: the registry's once it is loaded (it may hold modes a user registered: only
    a loaded registry can), else the built-ins, without loading torch."""
    if "saelens_amort.inference.registry" in sys.modules:
        from saelens_amort.inference import list_modes

        return list_modes()
    return [m.name for m in BUILTIN_MODES]


def check_modes(modes: Sequence[str], *, base: Callable[[str], str] = str, note: str = "") -> None:
    """SaeAmortError naming the modes of `modes` whose `base` name is not registered (or that none is given)."""
    unknown = [m for m in modes if base(m) not in known_modes()]
    if unknown or not modes:
        raise SaeAmortError(f"unknown mode(s) {', '.join(unknown) or '(none given)'}; registered modes: "
                            f"{', '.join(known_modes())}{note}")


def known_metrics() -> list[str]:
    """The metric family names a config may use (as `known_modes`)."""
    if "saelens_amort.metrics.registry" in sys.modules:
        from saelens_amort.metrics import list_metrics

        return list_metrics()
    return list(BUILTIN_METRICS)
