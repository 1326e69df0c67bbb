"""SAEBench adapter: any SAE with any inference mode behind SAEBench's custom-SAE contract.

SAEBench's evals (absorption, sparse probing, TPP, SCR, core) take a `BaseSAE`-like module: `encode` / `decode` /
`forward`, `W_enc` [d_in, d_sae], unit-norm `W_dec` [d_sae, d_in], `b_enc`, `b_dec`, `device`, `dtype` and `cfg`
(`d_in`, `d_sae`, `hook_name`, `hook_layer`, `model_name`, …). `as_saebench_sae(sae, mode)` returns one whose
`encode` runs the chosen inference mode on the SAE's dictionary, in unit-atom code space (u = z · ‖d_j‖, so that
`W_dec` is unit-norm as SAEBench requires and decode(u) = u W_dec + b_dec is the SAE's own reconstruction). It
subclasses SAEBench's real `BaseSAE` when sae-bench is installed (`pip install --no-deps sae-bench`; its full
dependency set pins numpy < 2), and otherwise provides the same attributes on an `nn.Module`.

SAEs with per-token input normalisation (SAE-Lens `layer_norm`, whitening) are refused: their reconstruction is not
linear in the codes, so no `W_dec` can represent it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saelens_amort.errors import SaeAmortError

try:  # the real contract when sae-bench is importable
    from sae_bench.custom_saes.base_sae import BaseSAE as _Base
    from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig as _Config

    HAVE_SAEBENCH = True
except ImportError:  # pragma: no cover - exercised where sae-bench is absent
    _Base, _Config, HAVE_SAEBENCH = None, None, False


@dataclass
class _FallbackConfig:
    model_name: str
    d_in: int
    d_sae: int
    hook_layer: int
    hook_name: str
    context_size: int | None = None
    hook_head_index: int | None = None
    architecture: str = ""
    prepend_bos: bool = True
    normalize_activations: str = "none"
    dtype: str = ""
    device: str = ""
    dataset_path: str = ""
    training_tokens: int = -100_000
    activation_fn_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class _Adapter(nn.Module):
    """The attributes and methods of SAEBench's BaseSAE around our inference engine."""

    def _setup(self, sae, mode: str, lam: float | None, infer_kwargs: dict, device, dtype) -> None:
        from saelens_amort.saes import Dictionary

        d = Dictionary.of(sae)
        if d.processing is not None and (d.processing.normalization != "none" or d.processing.hook_z):
            raise SaeAmortError(f"{type(sae).__name__} normalises each input ({sae.cfg.normalize_activations}); its "
                                "reconstruction is not linear in the codes, so SAEBench's unit-norm W_dec cannot "
                                "express it")
        self._sae, self._dictionary, self.mode, self.lam, self._infer_kwargs = sae, d, mode, lam, infer_kwargs
        with torch.no_grad():
            norms = d.norms.to(dtype)
            self.W_dec.copy_(d.atoms.to(dtype))
            self.b_dec.copy_(d.bias.to(dtype))
            self.W_enc.copy_((sae.W_enc.detach() * norms).to(dtype) if hasattr(sae, "W_enc") else d.atoms.T.to(dtype))
            if hasattr(sae, "b_enc"):
                self.b_enc.copy_((sae.b_enc.detach() * norms).to(dtype))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Unit-atom codes of x ([B, F] or [B, L, F]) in the adapter's inference mode."""
        from saelens_amort.inference import infer

        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        res = infer(flat, self._sae, self.mode, lam=self.lam, **self._infer_kwargs)
        u = self._dictionary.from_sae_codes(res.codes.to(self._dictionary.atoms.dtype))
        return u.to(self.W_dec.dtype).reshape(*shape[:-1], -1)

    def decode(self, feature_acts: Tensor) -> Tensor:
        return feature_acts @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def _make_class():
    if HAVE_SAEBENCH:
        return type("SAEBenchAdapter", (_Adapter, _Base), {})
    return type("SAEBenchAdapter", (_Adapter,), {})


SAEBenchAdapter = _make_class()


def as_saebench_sae(sae, mode: str = "semi", *, lam: float | None = None, calib_x: Tensor | None = None,
                    model_name: str | None = None, hook_layer: int | None = None, device: Any = None,
                    dtype: torch.dtype | None = None, **infer_kwargs: Any):
    """An SAEBench custom SAE whose `encode` runs `mode` on `sae`'s dictionary.

    λ-modes need `lam`, or `calib_x` (activations) to calibrate it to the encoder's mean L0 once, here.
    """
    from saelens_amort.inference import calibrate_lambda, get_mode

    spec = get_mode(mode)
    if spec.needs_lambda and lam is None:
        if calib_x is None:
            raise SaeAmortError(f"mode {mode!r} needs lam, or calib_x to calibrate it to the encoder's L0")
        lam = calibrate_lambda(calib_x, sae, "unamortized", strict=False).lam
    meta = sae.cfg.metadata
    hook_name = meta.hook_name or (f"blocks.{hook_layer}.hook_resid_post" if hook_layer is not None else None)
    if hook_name is None:
        raise SaeAmortError("the SAE names no hook; pass hook_layer")
    if hook_layer is None:
        parts = hook_name.split(".")
        hook_layer = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    device = torch.device(device if device is not None else sae.W_dec.device)
    dtype = dtype or sae.W_dec.dtype
    model = model_name or meta.model_name or ""
    if HAVE_SAEBENCH:
        adapter = SAEBenchAdapter(sae.cfg.d_in, sae.cfg.d_sae, model, hook_layer, device, dtype, hook_name)
    else:  # pragma: no cover
        adapter = SAEBenchAdapter()
        adapter.W_enc = nn.Parameter(torch.zeros(sae.cfg.d_in, sae.cfg.d_sae, dtype=dtype, device=device))
        adapter.W_dec = nn.Parameter(torch.zeros(sae.cfg.d_sae, sae.cfg.d_in, dtype=dtype, device=device))
        adapter.b_enc = nn.Parameter(torch.zeros(sae.cfg.d_sae, dtype=dtype, device=device))
        adapter.b_dec = nn.Parameter(torch.zeros(sae.cfg.d_in, dtype=dtype, device=device))
        adapter.device, adapter.dtype = device, dtype
        adapter.cfg = _FallbackConfig(model, sae.cfg.d_in, sae.cfg.d_sae, hook_layer, hook_name,
                                      dtype=str(dtype).split(".")[1])
    adapter.cfg.architecture = f"saelens_amort[{mode}]:{sae.cfg.architecture()}"
    adapter._setup(sae, mode, lam, infer_kwargs, device, dtype)
    return adapter
