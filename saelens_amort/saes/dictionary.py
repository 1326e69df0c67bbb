"""The dictionary view of an SAE: what sparse coding solves against (DESIGN §2).

    F(u; x) = ½ ‖x' − u A‖² + λ ‖u‖₁ ,  u ≥ 0

`A` holds the *unit-norm* atoms (rows) of the SAE's effective decoder `D` (`decode(z) = z @ D + b` before any output
de-normalisation), `norms` their lengths, so SAE codes are `z = u / norms` and `u = z * norms`. `x'` is the input
after the SAE's own input processing, minus the decoder bias `b` (so `x − decode(z)` and `x' − u A` are the same
residual in the SAE's normalised space). Zero-norm atoms get code 0 forever.

`Dictionary.from_sae(sae)` works for every SAE-Lens architecture whose decode is affine in the codes (standard, topk
with or without `rescale_acts_by_decoder_norm`, jumprelu — which is also how batchtopk and matryoshka batchtopk are
saved —, gated, matching_pursuit, abstopk, the training classes, converted dictionary_learning SAEs, and any
architecture registered later): `D` and `b` are *probed* from the SAE's own decode and verified on random
non-negative codes (`saes.dictionary_probe`), never read off per architecture. So any per-latent factor between code
and decoder (a gate or magnitude scale, TopK's `1/‖W_dec_j‖`) is folded into `D`. Refused, with the reason:
transcoders (decoder writes another hook than the encoder reads), temporal SAEs (reconstruction adds codes predicted
from context), and any SAE whose decode fails the affine check. abstopk codes may be negative, so non-negative
sparse coding on it solves a different problem: allowed, with a warning.

Input processing. `process(x)` mirrors SAE-Lens' `process_sae_in` up to the bias: cast to the SAE's dtype, flatten
hook_z heads, apply `normalize_activations` ("constant_norm_rescale" and "layer_norm" are per token; SAE-Lens applies
no runtime transform for "none", "expected_average_only_in" and "covariance_whitening"), recomputed from x — never
from the statistics SAE-Lens keeps on the SAE object. `target(x) = process(x) − b` *always* subtracts the decoder
bias, whether or not the SAE applies `b_dec` to its encoder input: the objective is about reconstruction, so the
residual `x' − u A` must equal `process(x) − decode(z)`. For an SAE with `apply_b_dec_to_input=False` (e.g.
dictionary_learning's JumpReLU) `x'` therefore differs from the encoder's input, as intended.
Reconstructions live in the processed space; `to_input_space(y, x)` undoes the per-token normalisation (and the hook_z
flattening) with x's own statistics, and `decode_to_input_space(u, x)` equals `sae.decode(to_sae_codes(u))` after
`sae.encode(x)` — use it for NMSE in x's space.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.saes.dictionary_probe import (
    SIGNED_CODE_ARCHITECTURES,
    InputProcessing,
    architecture_name,
    probe_affine,
)

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass(eq=False)
class Dictionary:
    atoms: Float[Tensor, "d_sae d_in"]
    """Unit-norm atoms (rows); rows of zero-norm decoder directions stay zero."""
    norms: Float[Tensor, " d_sae"]
    """Norms of the effective decoder rows: SAE code z = u / norms."""
    bias: Float[Tensor, " d_in"]
    """Decoder bias b in decode(z) = z @ D + b."""
    sae: "SAE | None" = None
    """The SAE this view was built from (None for a bare matrix)."""
    _lipschitz: float | None = field(default=None, repr=False)
    processing: InputProcessing | None = None
    """The SAE's input processing (None for a bare matrix: cast to the atoms' dtype only)."""
    architecture: str | None = None
    """`sae.cfg.architecture()` of the source SAE (None for a bare matrix)."""

    @property
    def d_sae(self) -> int:
        return self.atoms.shape[0]

    @property
    def d_in(self) -> int:
        return self.atoms.shape[1]

    @classmethod
    def from_matrix(cls, D: Float[Tensor, "d_sae d_in"], bias: Float[Tensor, " d_in"] | None = None) -> "Dictionary":
        """A dictionary from a decoder matrix (rows are atoms, any norms) and an optional bias."""
        if D.ndim != 2:
            raise SaeAmortError(f"a dictionary matrix must be 2-D [d_sae, d_in], got shape {tuple(D.shape)}")
        wide = D.detach().to(torch.promote_types(D.dtype, torch.float32))  # bf16/fp16 norms in fp32
        norms = wide.norm(dim=1)
        atoms = torch.where(norms[:, None] > 0, wide / norms.clamp_min(torch.finfo(wide.dtype).tiny)[:, None], 0.0)
        if bias is None:
            bias = torch.zeros(D.shape[1], dtype=D.dtype, device=D.device)
        elif bias.shape != (D.shape[1],):
            raise SaeAmortError(f"a dictionary bias must have shape ({D.shape[1]},), got {tuple(bias.shape)}")
        return cls(atoms=atoms.to(D.dtype), norms=norms.to(D.dtype), bias=bias.detach().to(D.dtype))

    @classmethod
    def from_sae(cls, sae: "SAE | Any") -> "Dictionary":
        """The effective dictionary of any SAE with SAE-Lens' interface (see the module docstring).

        Raises SaeAmortError naming the architecture when its decoder cannot be expressed as `z @ D + b`.
        """
        D, b = probe_affine(sae)  # refuses unsupported architectures first
        processing = InputProcessing.of(sae)
        processing.check_against(sae)
        arch = architecture_name(sae)
        if arch in SIGNED_CODE_ARCHITECTURES:
            warnings.warn(
                f"{arch} SAEs emit signed codes; the toolkit's sparse coding is non-negative, so its modes solve a "
                "different problem than this SAE's encoder",
                UserWarning,
                stacklevel=2,
            )
        base = cls.from_matrix(D, b)
        return dataclasses.replace(base, sae=sae, processing=processing, architecture=arch)

    @classmethod
    def of(cls, source: "Dictionary | SAE | Tensor | Any") -> "Dictionary":
        """A Dictionary from a Dictionary (returned as is), an SAE (`from_sae`) or a decoder matrix (`from_matrix`).

        Building from an SAE probes its decode (O(d_in² · d_sae)), so the view of an SAE module is cached on the SAE
        object (it dies with the SAE) and rebuilt when any of its parameters or buffers changes (replaced
        tensors change their data pointer, in-place updates bump their version).
        """
        if isinstance(source, Dictionary):
            return source
        if isinstance(source, Tensor):
            return cls.from_matrix(source)
        if callable(getattr(source, "decode", None)) and hasattr(source, "cfg"):
            return _cached_view(source, cls.from_sae)
        raise SaeAmortError(
            f"cannot build a dictionary from {type(source).__name__}; pass an SAE-Lens SAE, a Dictionary or a "
            "[d_sae, d_in] decoder matrix"
        )

    def process(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The SAE's input processing of x (dtype cast, hook_z flattening, activation normalisation), no bias."""
        if self.processing is not None:
            return self.processing.apply(x)
        if x.shape[-1] != self.d_in:
            raise SaeAmortError(f"activations have last dimension {x.shape[-1]}, the dictionary expects {self.d_in}")
        return x.to(self.atoms.dtype)

    def target(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """x' = the SAE's input processing of x, minus the decoder bias (for a bare matrix: x − b)."""
        return self.process(x) - self.bias

    def to_input_space(self, y: Float[Tensor, "... d_in"], x: Tensor) -> Tensor:
        """A reconstruction y in the processed space → x's space (undo x's per-token normalisation, hook_z shape)."""
        return y if self.processing is None else self.processing.invert(y, x)

    def to_sae_codes(self, u: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """Unit-atom codes u → the SAE's own code space z = u / norms (0 on zero-norm atoms)."""
        if bool((self.norms > 0).all()):
            return u / self.norms
        return torch.where(self.norms > 0, u / self.norms.clamp_min(torch.finfo(self.norms.dtype).tiny), 0.0)

    def from_sae_codes(self, z: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """SAE codes z → unit-atom codes u = z * norms."""
        return z * self.norms

    def reconstruct(self, u: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """u A + b: the reconstruction in the SAE's normalised input space."""
        return u @ self.atoms + self.bias

    def decode_to_input_space(self, u: Float[Tensor, "... d_sae"], x: Tensor) -> Tensor:
        """The reconstruction of x from unit-atom codes u, in x's own space (= the SAE's decode of z = u / norms)."""
        return self.to_input_space(self.reconstruct(u), x)

    @property
    def lipschitz(self) -> float:
        """L = σ_max(A)² (top eigenvalue of the Gram matrix, fp32 result); computed once per dictionary."""
        if self._lipschitz is None:
            self._lipschitz = _sigma_max_sq(self.atoms)
        return self._lipschitz


_VIEW_ATTRIBUTE = "_saeamort_dictionary"
"""Where an SAE module keeps its cached view (stamp, Dictionary). On the SAE itself, not in a global weak map: the view
refers back to its SAE, so a global map would keep every SAE alive."""


def _cached_view(sae: Any, build: Any) -> Dictionary:
    """`build(sae)`, reused while the SAE module's tensors are unchanged (non-modules are never cached)."""
    stamp = _module_stamp(sae)
    if stamp is None:
        return build(sae)
    cached = vars(sae).get(_VIEW_ATTRIBUTE)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    view = build(sae)
    vars(sae)[_VIEW_ATTRIBUTE] = (stamp, view)
    return view


def _module_stamp(obj: Any) -> tuple | None:
    """Identity and version of every tensor of an nn.Module (None for anything else)."""
    if not isinstance(obj, torch.nn.Module):
        return None
    tensors = [*obj.parameters(), *obj.buffers()]
    return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors)


@torch.no_grad()
def _sigma_max_sq(A: Tensor, chunk_elements: int = 1 << 24) -> float:
    """σ_max(A)²: the top eigenvalue of the smaller Gram matrix (AᵀA or AAᵀ; accumulated in fp32, solved in fp64).

    Exact up to fp32 rounding. Plain power iteration was measured to stop 0.2 % *below* σ² after 300 iterations
    (13 s) on random 65536×768 unit atoms, where the top eigenvalues crowd together; 1/L would then overshoot.
    """
    M = A if A.shape[0] >= A.shape[1] else A.T
    rows = max(1, chunk_elements // max(M.shape[1], 1))
    gram = torch.zeros(M.shape[1], M.shape[1], dtype=torch.float32, device=M.device)
    for start in range(0, M.shape[0], rows):
        block = M[start : start + rows].float()
        gram += block.T @ block
    top = float(torch.linalg.eigvalsh(gram.cpu().double())[-1]) if gram.numel() else 0.0
    return max(top, 0.0) * (1 + 1e-5)  # a hair above σ² keeps 1/L a safe step despite fp32 accumulation
