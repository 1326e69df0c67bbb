"""Latent edits as TransformerLens hooks held by a context manager (DESIGN §5).

At the SAE's hook (hook_z activations [..., n_heads, d_head] are edited as flat rows and put back in their shape),
for every edited position:  z = codes of x in the chosen inference mode (amortized = `sae.encode`,
or semi / unamortized / … at λ),  z' = edit(z),  and  x_new = x + decode(z') − decode(z),  so the SAE's error term
x − decode(z) is kept and an edit that changes nothing changes nothing. The hook lives only inside the `with` block
(`HookedTransformer.hooks`, which removes it on exit and on exceptions).

`LatentEdit` covers the common edits (ablate, scale, set; optionally only where a latent is live, i.e. above a
threshold); any function `z → z'` works too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saelens_amort.errors import SaeAmortError

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class LatentEdit:
    """z' = z with `ablate` latents set to 0, `scale` latents multiplied, `set` latents assigned.

    `live_threshold` (per latent, optional): scale / set apply only where z_j > threshold_j (the α-sweep's "where the
    latent is live"); ablation applies everywhere.
    """

    ablate: tuple[int, ...] = ()
    scale: Mapping[int, float] = field(default_factory=dict)
    set: Mapping[int, float] = field(default_factory=dict)
    live_threshold: Mapping[int, float] | None = None

    @property
    def latents(self) -> list[int]:
        return sorted({*self.ablate, *self.scale, *self.set})

    def check(self, d_sae: int) -> None:
        """Every latent index is in [0, d_sae)."""
        bad = [j for j in self.latents if not 0 <= int(j) < d_sae]
        if bad:
            raise SaeAmortError(f"latent index {bad[0]} is out of range for an SAE with d_sae={d_sae} "
                                f"(valid: 0 … {d_sae - 1})")

    def __call__(self, z: Tensor) -> Tensor:
        out = z.clone()
        if self.ablate:
            out[..., list(self.ablate)] = 0
        for mapping, op in ((self.scale, "scale"), (self.set, "set")):
            for j, value in mapping.items():
                live = torch.ones_like(z[..., j], dtype=torch.bool)
                if self.live_threshold is not None and j in self.live_threshold:
                    live = z[..., j] > self.live_threshold[j]
                new = z[..., j] * value if op == "scale" else torch.full_like(z[..., j], value)
                out[..., j] = torch.where(live, new, out[..., j])
        return out


def parse_edit(ablate: str = "", amplify: str = "", set_values: str = "") -> LatentEdit:
    """CLI form: ablate '12,34', amplify '56:3.0,7:2', set '78:5.0'."""
    def ints(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise SaeAmortError(f"latent list must be comma-separated integers, got {text!r}") from None

    def pairs(text: str, what: str) -> dict[int, float]:
        out = {}
        for item in (t for t in text.split(",") if t.strip()):
            j, sep, v = item.partition(":")
            try:
                out[int(j)] = float(v)
            except ValueError:
                raise SaeAmortError(f"{what} takes LATENT:VALUE pairs like 56:3.0, got {item!r}") from None
            if not sep:
                raise SaeAmortError(f"{what} takes LATENT:VALUE pairs like 56:3.0, got {item!r}")
            if not -float("inf") < out[int(j)] < float("inf"):
                raise SaeAmortError(f"{what} values must be finite, got {item!r}")
        return out

    return LatentEdit(ablate=ints(ablate), scale=pairs(amplify, "--amplify"), set=pairs(set_values, "--set"))


@contextlib.contextmanager
def latent_edit(
    model: "HookedTransformer",
    sae: "SAE",
    edit: Callable[[Tensor], Tensor],
    *,
    hook_name: str | None = None,
    mode: str = "amortized",
    lam: float | None = None,
    skip_first: bool = True,
    **infer_kwargs: Any,
) -> Iterator[dict]:
    """Run the model with `edit` applied to the SAE codes at `hook_name` (default: the SAE's hook) inside the block.

    skip_first: leave position 0 (BOS) untouched in full-sequence passes (a one-token pass, as in cached generation,
    is edited). lam: λ of a λ-mode; None calibrates it once, on the first forward pass's edited positions, and reuses
    it for every later pass in the block. Yields a dict that records the λ used and the number of forward passes and
    edited positions.
    """
    from saelens_amort.inference import infer
    from saelens_amort.saes import Dictionary

    dictionary = Dictionary.of(sae)
    if isinstance(edit, LatentEdit):
        if not edit.latents:
            raise SaeAmortError("the edit names no latent; give at least one to ablate, amplify or set")
        edit.check(dictionary.d_sae)
    hook_name = hook_name or sae.cfg.metadata.hook_name
    if hook_name not in model.hook_dict:
        raise SaeAmortError(f"hook {hook_name!r} is not in the model")
    log: dict = {"passes": 0, "edited_positions": 0, "lam": lam}

    def hook(act: Tensor, hook: Any) -> Tensor:
        first = 1 if skip_first and act.shape[1] > 1 else 0
        edited = act[:, first:]
        x = edited.reshape(-1, dictionary.d_in)  # hook_z: [B, T, n_heads, d_head] → rows of n_heads · d_head
        result = infer(x, sae, mode, lam=log["lam"], **infer_kwargs)
        log["lam"] = result.lam
        z = result.codes
        u, u_edit = dictionary.from_sae_codes(z), dictionary.from_sae_codes(edit(z))
        delta = dictionary.decode_to_input_space(u_edit, x) - dictionary.decode_to_input_space(u, x)
        out = act.clone()
        out[:, first:] = (x + delta.to(x.dtype)).reshape(edited.shape).to(act.dtype)
        log["passes"] += 1
        log["edited_positions"] += x.shape[0]
        return out

    with model.hooks(fwd_hooks=[(hook_name, hook)]):
        yield log


def active_hooks(model: "HookedTransformer") -> int:
    """Forward and backward hooks currently registered anywhere in the model (0 outside every edit)."""
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def checked_latents(latents: Sequence[int], d_sae: int) -> list[int]:
    """A non-empty list of valid latent indices."""
    latents = [int(j) for j in latents]
    if not latents:
        raise SaeAmortError("the latent list is empty; give at least one latent index")
    LatentEdit(ablate=tuple(latents)).check(d_sae)
    return latents
