"""Amortized inference: exactly the SAE's own encoder, `sae.encode(x)`, bit for bit (DESIGN §3).

TopK / BatchTopK codes are the SAE's own TopK / threshold codes (never "top 10 % with signs", never without b_dec).
The objective is reported at λ when one is given, so the amortization gap F(z_amort) − F(z*) is one subtraction
(through the codes' sparse product; without λ it is NaN and nothing is computed for it).

Counted FLOPs (`flops.py`): the encoder's own, measured once per SAE by torch's FlopCounterMode on one row (an
encoder is any module: gated encoders run two [d_in, d_sae] products, LocA-SAE one per group), times the rows, plus
the objective's product.
"""

from __future__ import annotations

import weakref

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.flops import Flops
from saelens_amort.inference.registry import register_mode
from saelens_amort.inference.result import InferenceResult, ModeOptions, make_result, objective
from saelens_amort.saes.dictionary import Dictionary
from saelens_amort.saes.dictionary_probe import encode_rows


@torch.no_grad()
def encode(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """One encoder pass: exactly `sae.encode(x)`; objective reported at λ when given."""
    sae = dictionary.sae
    if sae is None:
        raise SaeAmortError("amortized mode needs the SAE's encoder; pass the SAE, not a bare Dictionary")
    codes = encode_rows(sae, x)
    flops = Flops(x.shape[0], x.device)
    flops.add(encoder_flops(sae, x))
    u = dictionary.from_sae_codes(codes.to(dictionary.atoms.dtype))
    obj = objective(dictionary.target(x), u, dictionary, options.lam, flops=flops)
    return make_result(codes, obj, lam=options.lam, info=flops.info())


_ENCODER_FLOPS: "weakref.WeakKeyDictionary[object, tuple[tuple, float]]" = weakref.WeakKeyDictionary()


def encoder_flops(sae: object, x: Float[Tensor, "N d_in"]) -> float:
    """FLOPs per row of `sae.encode`, counted by torch's FlopCounterMode on the first row of x (cached per SAE and
    weight version)."""
    key = tuple((p.data_ptr(), p._version) for p in sae.parameters())  # type: ignore[attr-defined]
    hit = _ENCODER_FLOPS.get(sae)
    if hit is not None and hit[0] == key:
        return hit[1]
    if x.shape[0] == 0:
        return 0.0
    row = x[:1].detach().clone()  # counted apart from any autograd graph x belongs to (e.g. inside a model hook)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encode_rows(sae, row)
    value = float(counter.get_total_flops())
    _ENCODER_FLOPS[sae] = (key, value)
    return value


register_mode("amortized", encode, needs_lambda=False, needs_sae=True, options=())
