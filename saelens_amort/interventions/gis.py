"""Generative intervention scoring (GIS, DESIGN §5): an intervention of calibrated strength, then generation.

The intervention at the SAE's hook, on every position but BOS:

    x_new = x + α · r · Δ ,      r = rms(x) / rms(Δ)   over the calibration tokens' edited (non-BOS, non-pad) positions

- kind 'steer':  Δ = Σ_{j∈S} D_j / ‖D_j‖, the latents' unit decoder directions (the same at every position);
- kind 'ablate': Δ = −(decode(z) − decode(z with S zeroed)), the latents' per-token contribution in the chosen
  inference mode, removed (α = 1/r is exact ablation, on every pass).

The RMS normalisation makes α mean the same across SAEs and modes. The ratio r (and λ of a λ-mode, when none is
given) is measured once, on the calibration tokens, and reused by every later pass, generation included: re-measured
per pass it would follow each pass's prompt and continuation, and the calibrated α would give another KL. α is found
by bisection in log α so that the mean next-token KL(intervened ‖ clean) over the prompts is within `rel_tol` of the
target, in at most `max_passes` forward passes (reported). Then each prompt is continued with and without the intervention (greedy and seeded
sampling), and scored by a class probe on the generated text's pooled activations (shift of the target class's
probability) and by fluency: the CE of the generated tokens under the clean model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.runners.gis_config import KINDS
from saelens_amort.interventions.hooks import checked_latents
from saelens_amort.metrics.next_token import next_token_scores

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

ALPHA_RANGE = (1e-3, 1e3)


@dataclass(frozen=True)
class Calibrated:
    alpha: float
    kl: float
    target: float
    passes: int
    reached: bool
    rms_ratio: float
    """r = rms(x) / rms(Δ) on the calibration tokens: generate with `gis_hook(alpha=alpha, rms_ratio=rms_ratio)`."""
    lam: float | None
    """λ of the codes (None for modes without one): pass it on to `gis_hook` too."""


@dataclass(frozen=True)
class _Intervention:
    """Δ of the module docstring for one SAE, latent set, kind and inference mode."""

    sae: "SAE"
    latents: list[int]
    kind: str
    mode: str
    infer_kwargs: dict

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    def direction(self, x: Tensor, lam: float | None) -> tuple[Tensor, float | None]:
        """Δ for flat activations x [N, d_in] (in x's space) and the λ its codes used."""
        from saelens_amort.inference import infer
        from saelens_amort.saes import Dictionary

        d = Dictionary.of(self.sae)
        bias = d.bias.expand(x.shape[0], -1)
        if self.kind == "steer":
            steer = d.atoms[self.latents].sum(0, keepdim=True).expand(x.shape[0], -1)
            return d.to_input_space(steer + bias, x) - d.to_input_space(bias, x), lam
        result = infer(x, self.sae, self.mode, lam=lam, **self.infer_kwargs)
        u = result.codes[:, self.latents].to(d.atoms.dtype) * d.norms[self.latents]
        return -(d.to_input_space(u @ d.atoms[self.latents] + bias, x) - d.to_input_space(bias, x)), result.lam


def _intervention(sae: "SAE", latents: Sequence[int], kind: str, mode: str, infer_kwargs: dict) -> _Intervention:
    from saelens_amort.saes import Dictionary

    if kind not in KINDS:
        raise SaeAmortError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return _Intervention(sae, checked_latents(latents, Dictionary.of(sae).d_sae), kind, mode, infer_kwargs)


@contextlib.contextmanager
def gis_hook(model: "HookedTransformer", sae: "SAE", hook_name: str, latents: Sequence[int], alpha: float, *,
             rms_ratio: float, kind: str = "steer", mode: str = "amortized", lam: float | None = None,
             **infer_kwargs: Any) -> Iterator[None]:
    """x_new = x + alpha · rms_ratio · Δ (module docstring) at every non-BOS position, active inside the block only.

    rms_ratio (and lam for λ-modes) come from `calibrate_alpha`; with lam None a λ-mode calibrates λ once, on the first
    forward pass, and reuses it.
    """
    spec = _intervention(sae, latents, kind, mode, infer_kwargs)
    state = {"lam": lam}

    def hook(act: Tensor, hook: Any) -> Tensor:
        first = 1 if act.shape[1] > 1 else 0
        edited = act[:, first:]
        x = edited.reshape(-1, spec.d_in).float()  # hook_z heads flattened, and put back below
        direction, state["lam"] = spec.direction(x, state["lam"])
        out = act.clone()
        new = x + alpha * rms_ratio * direction.float()
        out[:, first:] = new.reshape(edited.shape).to(act.dtype)
        return out

    with model.hooks(fwd_hooks=[(hook_name, hook)]):
        yield


@torch.no_grad()
def rms_ratio(model: "HookedTransformer", tokens: Tensor, mask: Tensor, sae: "SAE", hook_name: str,
              latents: Sequence[int], *, kind: str = "steer", mode: str = "amortized", lam: float | None = None,
              **infer_kwargs: Any) -> tuple[float, float | None]:
    """r = rms(x) / rms(Δ) over the `mask`ed non-BOS positions of `tokens`, and the λ of Δ's codes (calibrated on
    those positions when a λ-mode gets none)."""
    spec = _intervention(sae, latents, kind, mode, infer_kwargs)
    acts = model.run_with_cache(tokens, names_filter=hook_name)[1][hook_name]
    x = acts[:, 1:][mask[:, 1:].to(acts.device)].reshape(-1, spec.d_in).float()
    if x.shape[0] == 0:
        raise SaeAmortError("no calibration position to measure the intervention's scale on (all BOS or padding)")
    direction, lam = spec.direction(x, lam)
    rms_dir = float(direction.float().pow(2).sum(-1).mean().sqrt())
    if rms_dir == 0:
        raise SaeAmortError(f"latents {spec.latents} contribute nothing at the calibration positions (Δ = 0): "
                            "they never fire there; choose latents that do")
    return float(x.pow(2).sum(-1).mean().sqrt()) / rms_dir, lam


@torch.no_grad()
def mean_kl(model: "HookedTransformer", tokens: Tensor, clean_lp: Tensor, mask: Tensor, **hook_kw: Any) -> float:
    """Mean next-token KL(intervened ‖ clean) over the `mask`ed positions."""
    with gis_hook(model, **hook_kw):
        lp = model(tokens).float().log_softmax(-1)
    kl = torch.nn.functional.kl_div(clean_lp, lp, log_target=True, reduction="none").sum(-1)
    return float(kl[mask].mean())


@torch.no_grad()
def calibrate_alpha(model: "HookedTransformer", tokens: Tensor, mask: Tensor, target: float, *, rel_tol: float = 0.05,
                    max_passes: int = 24, **hook_kw: Any) -> Calibrated:
    """α with mean KL within rel_tol of `target` by bracketing and bisection in log α; at most `max_passes`.

    The ratio r and λ are measured first, on the same tokens (module docstring), and held fixed for every α.
    """
    if not target > 0:
        raise SaeAmortError(f"--kl target must be > 0, got {target}")
    ratio, lam = rms_ratio(model, tokens, mask, **hook_kw)
    hook_kw = {**hook_kw, "lam": lam, "rms_ratio": ratio}
    clean_lp = model(tokens).float().log_softmax(-1)
    passes = 1
    best = (math.inf, 0.0, 0.0)

    def kl_at(a: float) -> float:
        nonlocal passes, best
        passes += 1
        v = mean_kl(model, tokens, clean_lp, mask, alpha=a, **hook_kw)
        best = min(best, (abs(v - target), a, v))
        return v

    def done(a: float, v: float, ok: bool) -> Calibrated:
        return Calibrated(alpha=a, kl=v, target=target, passes=passes, reached=ok, rms_ratio=ratio, lam=lam)
    lo, hi, a = None, None, 1.0
    while passes < max_passes:  # bracket
        v = kl_at(a)
        if abs(v - target) <= rel_tol * target:
            return done(a, v, True)
        if v < target:
            lo = a
            if hi is not None:
                break
            if a >= ALPHA_RANGE[1]:
                break
            a = min(a * 4, ALPHA_RANGE[1])
        else:
            hi = a
            if lo is not None:
                break
            if a <= ALPHA_RANGE[0]:
                break
            a = max(a / 4, ALPHA_RANGE[0])
    while lo is not None and hi is not None and passes < max_passes:
        a = math.sqrt(lo * hi)
        v = kl_at(a)
        if abs(v - target) <= rel_tol * target:
            return done(a, v, True)
        lo, hi = (a, hi) if v < target else (lo, a)
    _, a, v = best
    raise SaeAmortError(f"KL target {target:g} not reached within α ∈ [{ALPHA_RANGE[0]:g}, {ALPHA_RANGE[1]:g}] in "
                        f"{passes} forward passes; the best reached was KL {v:.4g} at α {a:.4g}")


@torch.no_grad()
def continuation_scores(model: "HookedTransformer", hook_name: str, tokens: Tensor, n_prompt: int, probe=None,
                        class_id: int | None = None) -> tuple[float, float | None]:
    """Fluency (mean CE of the generated tokens under the clean model) and the probe's P(class) on their pooled
    activations."""
    logits, cache = model.run_with_cache(tokens, names_filter=hook_name)
    ce = next_token_scores(logits, tokens)[1][:, n_prompt - 1:]
    prob = None
    if probe is not None and class_id is not None:
        pooled = cache[hook_name][0, n_prompt:].float().mean(0, keepdim=True).numpy()
        clf = probe.probes[class_id]
        prob = float(clf.predict_proba((pooled - probe.mean) / probe.std)[0, 1])
    return float(ce.mean()), prob
