"""Derive an SAE's effective dictionary by probing its decode, and mirror its input processing (DESIGN §2).

Nothing here assumes a decode formula per architecture. `probe_affine(sae)` calls the SAE's own `decode` with its
output de-normalisation and hook_z reshaping switched off (the *linear decode part* f), takes `b = f(0)` and
`D = ∂f/∂z` (one batched backward pass per chunk of output dimensions: O(d_in² · d_sae), cheaper than decoding the
identity, O(d_in · d_sae²)), and then verifies `f(z) ≈ z @ D + b` on random sparse, dense, large and small
non-negative z. Should autograd not see the real computation (a detached decode, inference tensors) the identity is
decoded instead; if a cheap additivity/homogeneity check fails, the decode is not affine and the SAE is refused.

`InputProcessing` re-implements SAE-Lens' input processing (dtype cast, hook_z flattening,
`run_time_activation_norm_fn_in`) from x alone, with its inverse, and is checked against the SAE's own functions
once; SAE-Lens keeps per-token statistics (`x_norm_coeff`, `ln_mu`, `ln_std`) on the SAE object between encode and
decode, which this module never reads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from saelens_amort.errors import SaeAmortError

NORMALIZATIONS = ("none", "expected_average_only_in", "covariance_whitening", "constant_norm_rescale", "layer_norm")
"""`cfg.normalize_activations` values understood. SAE-Lens' inference SAEs apply no runtime transform for the first
three (the scale or whitening is folded into the weights), so neither does the dictionary."""

SIGNED_CODE_ARCHITECTURES = frozenset({"abstopk"})
"""Architectures whose own codes may be negative; non-negative sparse coding on them solves a different problem."""

_LN_EPS = 1e-5  # SAE-Lens' run_time_activation_ln_in default
_PROBE_ELEMENTS = 1 << 24  # elements of one probe chunk (64 MiB in fp32)
_MISSING = object()


def architecture_name(sae: Any) -> str:
    """`sae.cfg.architecture()`, or the class name for objects that only look like an SAE."""
    try:
        return str(sae.cfg.architecture())
    except (AttributeError, TypeError):
        return type(sae).__name__


def refusal_reason(sae: Any) -> str | None:
    """Why `sae` cannot be a dictionary for its own input, or None. Checked before any probing."""
    try:
        from sae_lens.saes.temporal_sae import TemporalSAE
        from sae_lens.saes.transcoder import Transcoder
    except ImportError:  # pragma: no cover - older sae-lens
        return None
    if isinstance(sae, Transcoder):
        return (
            "a transcoder's decoder writes a different hook (d_out) than its encoder reads, so decode(z) does not "
            "reconstruct the activation x the codes are inferred from; sparse coding x on it is meaningless"
        )
    if isinstance(sae, TemporalSAE):
        return (
            "a temporal SAE reconstructs x from decode(novel codes) plus codes predicted by attention over earlier "
            "tokens, so decode(encode(x)) is not its reconstruction of x"
        )
    return None


def sae_dtype_device(sae: Any) -> tuple[torch.dtype, torch.device]:
    w = getattr(sae, "W_dec", None)
    if isinstance(w, Tensor):
        return w.dtype, w.device
    try:
        p = next(iter(sae.parameters()))
        return p.dtype, p.device
    except (AttributeError, StopIteration, TypeError):
        return getattr(sae, "dtype", torch.float32), torch.device(getattr(sae, "device", "cpu"))


@contextlib.contextmanager
def _preserved_attributes(sae: Any) -> Iterator[None]:
    """Undo any attribute the block sets or deletes on `sae` (SAE-Lens' norm functions keep state there)."""
    before = dict(vars(sae))
    try:
        yield
    finally:
        after = vars(sae)
        for name in [n for n in after if n not in before]:
            del after[name]
        for name, value in before.items():
            if after.get(name, _MISSING) is not value:
                after[name] = value


@contextlib.contextmanager
def linear_decode_part(sae: Any) -> Iterator[Callable[[Tensor], Tensor]]:
    """`sae.decode` with output de-normalisation and hook_z reshaping replaced by identities, restored afterwards."""
    identities = {"run_time_activation_norm_fn_out": lambda y: y, "reshape_fn_out": lambda y, d_head: y}
    with _preserved_attributes(sae):
        for name, fn in identities.items():
            if hasattr(sae, name):
                vars(sae)[name] = fn
        if isinstance(sae, torch.nn.Module) and not hasattr(sae, "d_head"):
            vars(sae)["d_head"] = None  # hook_z SAEs set it on their first encode; decode reads it
        yield sae.decode


def encode_rows(sae: Any, x: Tensor) -> Tensor:
    """`sae.encode` of flat rows [..., d_in]. A hook_z SAE reshapes its input from [..., n_heads, d_head] itself, so it
    reads flat rows with that reshaping switched off (flattened heads are exactly what it would build), restored
    afterwards; every other SAE (and any unflattened input) goes straight to `sae.encode`."""
    if getattr(sae, "hook_z_reshaping_mode", False) and x.ndim == 2 and x.shape[-1] == int(sae.cfg.d_in):
        with _preserved_attributes(sae):
            vars(sae)["reshape_fn_in"] = lambda rows: rows
            return sae.encode(x)
    return sae.encode(x)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32 and narrower (its rounding is far below the fp32 tolerance), fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def _tolerance(dtype: torch.dtype, device: torch.device) -> float:
    if dtype == torch.float64:
        return 1e-9
    if dtype == torch.float32:
        reduced = device.type == "cuda" and (
            torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        )
        return 1e-2 if reduced else 1e-4
    return 5e-2


def _probe_codes(d_sae: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Tensor:
    """Non-negative probe codes: 4 sparse, 4 dense, 2 large sparse, 2 tiny dense rows."""
    gen = torch.Generator().manual_seed(seed)
    nnz = max(1, min(d_sae, 8))
    sparse = torch.zeros(6, d_sae)
    for row in sparse:
        idx = torch.randperm(d_sae, generator=gen)[:nnz]
        row[idx] = 0.5 + 1.5 * torch.rand(nnz, generator=gen)
    sparse[4:] *= 30.0
    dense = torch.rand(6, d_sae, generator=gen)
    dense[4:] *= 1e-2
    return torch.cat([sparse, dense]).to(device=device, dtype=dtype)


def affine_error(f: Callable[[Tensor], Tensor], D: Tensor, b: Tensor, z: Tensor) -> float:
    """max over rows of ‖f(z) − (z D + b)‖ / (‖z D + b‖ + ‖z D‖), the reference in at least fp32."""
    with torch.no_grad():
        y = f(z)
        acc = _accumulation_dtype(z.dtype)
        if y.shape != (*z.shape[:-1], D.shape[1]):
            return float("inf")
        ref = z.to(acc) @ D.to(acc) + b.to(acc)
        err = (y.to(acc) - ref).norm(dim=-1)
        scale = ref.norm(dim=-1) + (ref - b.to(acc)).norm(dim=-1)
        rel = torch.where(err == 0, 0.0, err / scale.clamp_min(torch.finfo(acc).tiny))
        return float(rel.max()) if torch.isfinite(y).all() else float("inf")


def _jacobian(
    f: Callable[[Tensor], Tensor], d_sae: int, d_out: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """∂f/∂z as [d_sae, d_out], taken at z = 0.5 (so decodes linear only on z ≥ 0 still qualify)."""
    chunk = max(1, min(d_out, _PROBE_ELEMENTS // max(d_sae, 1)))
    cols = []
    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, d_out, chunk):
            c = min(chunk, d_out - start)
            z = torch.full((c, d_sae), 0.5, dtype=dtype, device=device, requires_grad=True)
            y = f(z)
            g = torch.zeros(c, d_out, dtype=y.dtype, device=device)
            g[torch.arange(c, device=device), torch.arange(start, start + c, device=device)] = 1
            (gz,) = torch.autograd.grad(y, z, grad_outputs=g)
            cols.append(gz.detach())
    return torch.cat(cols).T.contiguous()


@torch.no_grad()
def _decode_identity(f: Callable[[Tensor], Tensor], b: Tensor, d_sae: int, dtype: torch.dtype) -> Tensor:
    chunk = max(1, min(d_sae, _PROBE_ELEMENTS // max(d_sae, 1)))
    rows = []
    for start in range(0, d_sae, chunk):
        eye = torch.zeros(min(chunk, d_sae - start), d_sae, dtype=dtype, device=b.device)
        eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1
        rows.append(f(eye) - b)
    return torch.cat(rows)


@torch.no_grad()
def _linearity_error(f: Callable[[Tensor], Tensor], b: Tensor, z: Tensor) -> float:
    """Additivity and homogeneity of f − b on non-negative z, relative to the outputs' size."""
    acc = _accumulation_dtype(z.dtype)
    half = z.shape[0] // 2
    z1, z2 = z[:half], z[half : 2 * half]

    def g(v: Tensor) -> Tensor:
        return f(v).to(acc) - b.to(acc)

    pairs = [(g(z1 + z2), g(z1) + g(z2)), (g(3 * z1), 3 * g(z1))]
    worst = 0.0
    for lhs, rhs in pairs:
        if not (torch.isfinite(lhs).all() and torch.isfinite(rhs).all()):
            return float("inf")
        err = (lhs - rhs).norm(dim=-1)
        scale = (lhs.norm(dim=-1) + rhs.norm(dim=-1) + b.to(acc).norm()).clamp_min(torch.finfo(acc).tiny)
        worst = max(worst, float((torch.where(err == 0, 0.0, err / scale)).max()))
    return worst


def probe_affine(sae: Any) -> tuple[Tensor, Tensor]:
    """(D [d_sae, d_in], b [d_in]) with decode(z) == z @ D + b before de-normalisation; SaeAmortError if none exists."""
    arch = architecture_name(sae)
    reason = refusal_reason(sae)
    if reason is not None:
        raise SaeAmortError(f"{arch} SAE ({type(sae).__name__}) cannot be a sparse-coding dictionary: {reason}")
    cfg = getattr(sae, "cfg", None)
    if not callable(getattr(sae, "decode", None)) or not hasattr(cfg, "d_sae") or not hasattr(cfg, "d_in"):
        raise SaeAmortError(
            f"{type(sae).__name__} does not have SAE-Lens' interface (decode and cfg.d_in/d_sae); pass an SAE-Lens SAE"
        )
    d_sae, d_in = int(cfg.d_sae), int(cfg.d_in)
    dtype, device = sae_dtype_device(sae)
    tol = _tolerance(dtype, device)
    z = _probe_codes(d_sae, dtype, device)
    with linear_decode_part(sae) as f:
        with torch.no_grad():
            b = f(torch.zeros(1, d_sae, dtype=dtype, device=device)).reshape(-1)
        if b.numel() != d_in:
            raise SaeAmortError(
                f"{arch} SAE decodes {d_sae} latents to {b.numel()} values, not its d_in={d_in}: its decoder does not "
                "reconstruct its own input, so it cannot be a sparse-coding dictionary"
            )
        try:
            D = _jacobian(f, d_sae, d_in, dtype, device)
            err = affine_error(f, D, b, z)
        except (RuntimeError, NotImplementedError):  # not differentiable as written: decode the identity instead
            err = float("inf")
        if err > tol:
            lin = _linearity_error(f, b, z)
            if lin > tol:
                raise SaeAmortError(
                    f"{arch} SAE ({type(sae).__name__}): decode(z) is not affine in non-negative codes z (relative "
                    f"error {lin:.2g} > {tol:.0e}), so its decoder cannot be expressed as a dictionary z @ D + b"
                )
            D = _decode_identity(f, b, d_sae, dtype)
            err = affine_error(f, D, b, z)
        if err > tol:
            raise SaeAmortError(
                f"{arch} SAE ({type(sae).__name__}): decode(z) differs from z @ D + b by a relative {err:.2g} "
                f"(> {tol:.0e}) for the probed D, so its decoder cannot be expressed as a dictionary"
            )
    return D, b


@dataclass(frozen=True)
class InputProcessing:
    """SAE-Lens' input processing before b_dec: cast to `dtype`, flatten hook_z heads, normalise per token."""

    d_in: int
    dtype: torch.dtype
    normalization: str = "none"
    """`cfg.normalize_activations`; one of NORMALIZATIONS."""
    hook_z: bool = False
    """Flatten `[..., n_heads, d_head]` inputs (cfg.reshape_activations == "hook_z"); flat inputs are accepted too."""

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise SaeAmortError(
                f"normalize_activations={self.normalization!r} is not supported; supported: {', '.join(NORMALIZATIONS)}"
            )

    @classmethod
    def of(cls, sae: Any) -> "InputProcessing":
        cfg = sae.cfg
        dtype, _ = sae_dtype_device(sae)
        norm = getattr(cfg, "normalize_activations", "none") or "none"
        if norm not in NORMALIZATIONS:
            raise SaeAmortError(
                f"{architecture_name(sae)} SAE uses normalize_activations={norm!r}, which the dictionary cannot "
                f"mirror; supported: {', '.join(NORMALIZATIONS)}"
            )
        hook_z = getattr(cfg, "reshape_activations", "none") == "hook_z"
        return cls(d_in=int(cfg.d_in), dtype=dtype, normalization=norm, hook_z=hook_z)

    def flatten(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if x.shape[-1] == self.d_in:
            return x
        if self.hook_z and x.ndim >= 2 and x.shape[-2] * x.shape[-1] == self.d_in:
            return x.flatten(-2)
        what = "[..., d_in] or [..., n_heads, d_head]" if self.hook_z else "[..., d_in]"
        raise SaeAmortError(f"activations of shape {tuple(x.shape)} do not fit the SAE ({what} with d_in={self.d_in})")

    def apply(self, x: Tensor) -> Tensor:
        """The SAE's processed input (no bias subtracted), flattened to [..., d_in] in the SAE's dtype."""
        x = self.flatten(x)
        if self.normalization == "constant_norm_rescale":
            return x * ((self.d_in**0.5) / x.norm(dim=-1, keepdim=True))
        if self.normalization == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            return centred / (centred.std(dim=-1, keepdim=True) + _LN_EPS)
        return x

    def invert(self, y: Tensor, x: Tensor) -> Tensor:
        """Bring y from the processed space back to x's space (statistics recomputed from x; hook_z shape restored)."""
        flat = self.flatten(x)
        if self.normalization == "constant_norm_rescale":
            y = y / ((self.d_in**0.5) / flat.norm(dim=-1, keepdim=True))
        elif self.normalization == "layer_norm":
            mu = flat.mean(dim=-1, keepdim=True)
            y = y * (flat - mu).std(dim=-1, keepdim=True) + mu
        if x.shape[-1] != self.d_in:
            y = y.reshape(*y.shape[:-1], *x.shape[-2:])
        return y

    def check_against(self, sae: Any) -> None:
        """SaeAmortError unless `apply`/`invert` equal the SAE's own run_time_activation_norm_fn_in/_out."""
        fn_in = getattr(sae, "run_time_activation_norm_fn_in", None)
        fn_out = getattr(sae, "run_time_activation_norm_fn_out", None)
        if fn_in is None or fn_out is None:
            return
        _, device = sae_dtype_device(sae)
        gen = torch.Generator().manual_seed(1)
        x = (torch.randn(4, self.d_in, generator=gen) * 3 + 1).to(device=device, dtype=self.dtype)
        y = torch.randn(4, self.d_in, generator=gen).to(device=device, dtype=self.dtype)
        tol = _tolerance(self.dtype, device)
        with torch.no_grad(), _preserved_attributes(sae):
            theirs_in, theirs_out = fn_in(x), fn_out(y)
            pairs = [(theirs_in, self.apply(x)), (theirs_out, self.invert(y, x))]
        for theirs, ours in pairs:
            scale = float(theirs.float().norm()) + float(ours.float().norm())
            if theirs.shape != ours.shape or float((theirs.float() - ours.float()).norm()) > tol * max(scale, 1e-30):
                raise SaeAmortError(
                    f"{architecture_name(sae)} SAE's activation normalisation ({self.normalization!r}) does not "
                    "behave like SAE-Lens' own, so the dictionary cannot mirror its input processing"
                )
