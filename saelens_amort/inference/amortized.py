"""Amortized inference: exactly the SAE's own encoder, `sae.encode(x)`, bit for bit (DESIGN §3).

TopK / BatchTopK codes are the SAE's own TopK / threshold codes (never "top 10 % with signs", never without b_dec).
The objective is reported at λ when one is given, so the amortization gap F(z_amort) − F(z*) is one subtraction.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.errors import SaeAmortError
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
    u = dictionary.from_sae_codes(codes.to(dictionary.atoms.dtype))
    obj = objective(dictionary.target(x), u, dictionary, options.lam)
    return make_result(codes, obj, lam=options.lam)


register_mode("amortized", encode, needs_lambda=False, needs_sae=True, options=())
