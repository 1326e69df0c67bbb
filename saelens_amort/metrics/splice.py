"""Spliced CE / KL: the model's next-token loss with the hook's activation replaced by a mode's reconstruction
(DESIGN §4).

    spliced_metrics(model, sae, "semi", tokens, "blocks.2.hook_resid_post", lam=λ, keep_error=False)
      → SpliceResult(ce_clean, ce_spliced, ce_zero, ce_recovered, kl, kl_zero, …)

Three runs of the model on `tokens` [B, T]: clean; spliced, where every real non-BOS position of `hook_name` is
replaced by x̂ = the SAE's decode of the mode's codes (`infer(x, sae, mode, lam=λ, …)`); zero-ablated, where the same
positions are set to 0. A position is "BOS" when it is position 0 and holds the tokenizer's BOS id: SAEs are not
trained on it and its huge norm would dominate. With `keep_error=True` the SAE error term of the *amortized* SAE is
added back, x_new = x + x̂_mode − x̂_amortized (DESIGN §5), so amortized + keep_error reproduces the clean model.

Right-padded rows give their real lengths (`lengths` [B], BOS included): only positions < length are real. Padding
is told apart by length, never by token id — TransformerLens sets pad = BOS = EOS for tokenizers without a pad token
(GPT-2, many local checkpoints), and a real EOS may equal the pad id. Without `lengths` every position is real.
Scores average over the next-token predictions that a spliced position can affect and whose target is real (from
the first spliced position of each row to its last real token): CE (nats), CE recovered =
(CE_zero − CE_spliced) / (CE_zero − CE_clean), KL(clean ‖ spliced) and KL(clean ‖ zero). CE recovered is undefined
(None, and a reason in the metric's `skipped`) when zero-ablation does not raise the loss above the clean one.
Hooks live inside `with model.hooks(...)` (none survives the call); at a block's residual output the edited runs
start at the next block from the clean activation instead (`splice_forward`).

Given codes: `spliced_metrics(..., codes=z, encoder_codes=z_enc)` splices the codes a caller already has for the
replaced positions (row-major over [B, T], dense or CSR) instead of solving; `encoder_codes` give the error term's
amortized reconstruction (computed when absent). Memory: one call holds a few [B, T, V] tensors, so
`spliced_in_chunks` runs many sequences a chunk at a time (as many whole sequences as fit `max_positions`, at least
one), chunk-major — the clean and zero-ablated runs once per chunk, then every setting — and accumulates each setting
in a `SpliceMetric`.

`SpliceMetric` (registered as "splice", `input_kind = "splice"`) accumulates SpliceResults over token batches,
weighted by their scored predictions (exact under merge).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import infer, resolve_dictionary
from saelens_amort.inference.sparse_codes import csr_tensor
from saelens_amort.metrics.registry import Metric, register_metric
from saelens_amort.metrics.next_token import kl_per_position, next_token_scores
from saelens_amort.metrics.splice_forward import clean_logits, edited_logits

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from saelens_amort.saes.dictionary import Dictionary


class SpliceReference(NamedTuple):
    """What every splice of the same tokens shares: the clean log-probs and the zero-ablated losses."""

    log_probs: Float[Tensor, "B T1 V"]
    """Clean next-token log-probs at positions 0..T−2."""
    scored: Bool[Tensor, "B T1"]
    """Predictions that count (affected by a spliced position, target a real token)."""
    replace: Bool[Tensor, "B T"]
    """Positions whose activation is replaced."""
    ce_clean: float
    ce_zero: float
    kl_zero: float
    n_tokens: int
    clean_act: Tensor | None = None
    """The hook's clean activation, when edited runs start after the hook (`splice_forward`)."""


class SpliceResult(NamedTuple):
    mode: str
    keep_error: bool
    lam: float | None
    """λ the mode ran at (the calibrated one when none was given)."""
    n_tokens: int
    """Scored next-token predictions."""
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_recovered: float | None
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean); None when CE_zero ≤ CE_clean (undefined)."""
    kl: float
    """Mean KL(clean ‖ spliced) over scored predictions (nats)."""
    kl_zero: float
    """Mean KL(clean ‖ zero-ablated)."""


def _check(model: "HookedTransformer", tokens: Tensor, hook_name: str) -> Tensor:
    if hook_name not in model.hook_dict:
        raise SaeAmortError(f"the model has no hook {hook_name!r}")
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.ndim not in (1, 2):
        raise SaeAmortError("tokens must be an integer tensor [batch, seq] (or [seq])")
    tokens = tokens.reshape(1, -1) if tokens.ndim == 1 else tokens
    if tokens.shape[1] < 2:
        raise SaeAmortError(f"need at least 2 tokens per sequence to score next-token loss, got {tokens.shape[1]}")
    return tokens.to(model.cfg.device)


def _real_positions(tokens: Tensor, lengths: Tensor | None) -> Tensor:
    """[B, T] True at the positions before each row's length (all when lengths is None)."""
    if lengths is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.shape != tokens.shape[:1]:
        raise SaeAmortError(f"lengths must be one integer per row ({tokens.shape[0]}), "
                            f"got shape {tuple(lengths.shape)}")
    if bool((lengths < 0).any()) or bool((lengths > tokens.shape[1]).any()):
        raise SaeAmortError(f"lengths must lie in [0, {tokens.shape[1]}] (the row width), got {lengths.tolist()}")
    return torch.arange(tokens.shape[1], device=tokens.device) < lengths.to(tokens.device)[:, None]


def ce_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float | None:
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean), or None when zero-ablation does not raise the loss."""
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean) if ce_zero > ce_clean else None


def ce_recovered_problem(ce_clean: float, ce_zero: float) -> str:
    """Why CE recovered is undefined (for `skipped`)."""
    return f"zero-ablation CE ({ce_zero:.4g}) is not above clean CE ({ce_clean:.4g})"


def _positions(model: "HookedTransformer", tokens: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """[B, T] positions replaced (real, not BOS) and [B, T−1] predictions scored (after a replaced position, target
    real)."""
    real = _real_positions(tokens, lengths)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    replace = real.clone()
    if bos is not None:
        replace[:, 0] &= tokens[:, 0] != bos
    return replace, (replace.long().cumsum(dim=1)[:, :-1] > 0) & real[:, 1:]


def _no_scored_tokens() -> SaeAmortError:
    return SaeAmortError("no next-token prediction follows a spliced position (only BOS or padding?)")


@torch.no_grad()
def splice_reference(model: "HookedTransformer", tokens: Int[Tensor, "B T"], hook_name: str,
                     lengths: Int[Tensor, " B"] | None = None) -> SpliceReference:
    """The clean and zero-ablated runs on `tokens` (compute once, pass to several `spliced_metrics` calls).

    lengths: real tokens per row, BOS included, for right-padded rows (None: no padding)."""
    tokens = _check(model, tokens, hook_name)
    replace, scored = _positions(model, tokens, lengths)
    n = int(scored.sum())
    if n == 0:
        raise _no_scored_tokens()
    logits, clean_act = clean_logits(model, tokens, hook_name)
    log_probs, ce = next_token_scores(logits, tokens, in_place=True)  # a view of the logits' storage

    def zero(act: Tensor, hook: Any) -> Tensor:
        out = act.clone()
        out[replace] = 0
        return out

    zero_lp, zero_ce = next_token_scores(edited_logits(model, tokens, hook_name, zero, clean_act), tokens,
                                         in_place=True)
    kl_zero = float(kl_per_position(log_probs, zero_lp)[scored].double().mean())
    del zero_lp
    return SpliceReference(
        log_probs=log_probs, scored=scored, replace=replace, n_tokens=n,
        ce_clean=float(ce[scored].double().mean()), ce_zero=float(zero_ce[scored].double().mean()), kl_zero=kl_zero,
        clean_act=clean_act,
    )


def _check_codes(codes: Tensor | None, n_rows: int, d_sae: int, what: str) -> None:
    if codes is None:
        return
    if not isinstance(codes, Tensor) or codes.ndim != 2 or codes.shape[1] != d_sae:
        raise SaeAmortError(f"{what} must be a [replaced positions, d_sae={d_sae}] tensor, got "
                            f"{tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__}")
    if codes.shape[0] != n_rows:
        raise SaeAmortError(f"{what} hold {codes.shape[0]} rows but the tokens have {n_rows} replaced positions "
                            "(real, non-BOS): give one code row per replaced position, in row-major order")


def code_rows(codes: Tensor, start: int, stop: int) -> Tensor:
    """Rows start..stop−1 of dense or CSR codes, dense."""
    if codes.layout != torch.sparse_csr:
        return codes[start:stop]
    crow = codes.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    return csr_tensor(crow[start:stop + 1] - lo, codes.col_indices()[lo:hi], codes.values()[lo:hi],
                      (stop - start, codes.shape[1])).to_dense()


@torch.no_grad()
def spliced_metrics(
    model: "HookedTransformer",
    sae_or_dictionary: "SAE | Dictionary",
    mode: str,
    tokens: Int[Tensor, "B T"],
    hook_name: str,
    *,
    lam: float | None,
    keep_error: bool,
    reference: SpliceReference | None = None,
    lengths: Tensor | None = None,
    cache: dict | None = None,
    codes: Tensor | None = None,
    encoder_codes: Tensor | None = None,
    **infer_kwargs: Any,
) -> SpliceResult:
    """CE clean / spliced / zero-ablated, CE recovered and KL to the clean model for `mode` (module docstring).

    reference: `splice_reference(model, tokens, hook_name, lengths)` to reuse across modes (computed when None).
    lengths: real tokens per row of right-padded `tokens` (used when the reference is computed here).
    cache: a dict shared by calls on the same SAE, tokens and hook (e.g. with and without the error term): codes are
    inferred once per mode and options (the hook's input is the clean activation, the same in every call).
    codes: the mode's codes of the replaced positions ([n, d_sae], row-major over [B, T], dense or CSR), spliced as
    given instead of solving (`lam` is then only recorded). encoder_codes: likewise the amortized codes, for the
    error term of keep_error=True.
    infer_kwargs: passed to `infer` (steps, tol, k, …).
    """
    tokens = _check(model, tokens, hook_name)
    dictionary = resolve_dictionary(sae_or_dictionary)
    if keep_error and dictionary.sae is None:
        raise SaeAmortError("keep_error=True needs the SAE itself (its encoder gives the error term); pass the SAE")
    ref = reference if reference is not None else splice_reference(model, tokens, hook_name, lengths)
    if ref.replace.shape != tokens.shape:
        raise SaeAmortError(f"the reference was computed on tokens of shape {tuple(ref.replace.shape)}, "
                            f"not {tuple(tokens.shape)}")
    n_replaced, d_sae = int(ref.replace.sum()), dictionary.atoms.shape[0]
    _check_codes(codes, n_replaced, d_sae, "the given codes")
    _check_codes(encoder_codes, n_replaced, d_sae, "the given encoder codes")
    used_lam: list[float | None] = []

    def decode(x: Tensor, codes: Tensor) -> Tensor:
        u = dictionary.from_sae_codes(codes.to(dictionary.atoms.dtype))
        return dictionary.decode_to_input_space(u, x)

    memo = cache if cache is not None else {}

    def codes_of(x: Tensor, mode: str, lam: float | None, **kwargs: Any):
        key = (mode, lam, tuple(sorted(kwargs.items())), tuple(x.shape))
        if key not in memo:
            memo[key] = infer(x, sae_or_dictionary if mode != "amortized" else dictionary.sae or sae_or_dictionary,
                              mode, lam=lam, **kwargs)
        return memo[key]

    def splice(act: Tensor, hook: Any) -> Tensor:
        x = act[ref.replace]
        if codes is None:
            result = codes_of(x, mode, lam, **infer_kwargs)
            used_lam.append(result.lam)
            mode_codes = result.codes
        else:
            mode_codes = code_rows(codes, 0, n_replaced)
        recon = decode(x, mode_codes)
        if keep_error:  # the encoder's own reconstruction, also for amortized+refit (whose codes are not the encoder's)
            enc = codes_of(x, "amortized", None).codes if encoder_codes is None else code_rows(encoder_codes, 0,
                                                                                                 n_replaced)
            new = x + (recon - decode(x, enc)).to(x.dtype)
        else:
            new = recon
        out = act.clone()
        out[ref.replace] = new.to(act.dtype)
        return out

    log_probs, ce = next_token_scores(edited_logits(model, tokens, hook_name, splice, ref.clean_act), tokens,
                                      in_place=True)
    ce_spliced = float(ce[ref.scored].double().mean())
    return SpliceResult(
        mode=mode, keep_error=bool(keep_error), lam=used_lam[0] if used_lam else lam, n_tokens=ref.n_tokens,
        ce_clean=ref.ce_clean, ce_spliced=ce_spliced, ce_zero=ref.ce_zero,
        ce_recovered=ce_recovered(ref.ce_clean, ce_spliced, ref.ce_zero),
        kl=float(kl_per_position(ref.log_probs, log_probs)[ref.scored].double().mean()), kl_zero=ref.kl_zero,
    )


class SpliceSetting(NamedTuple):
    """One spliced measurement of `spliced_in_chunks`: a mode, with or without the error term, solved or given."""

    mode: str
    keep_error: bool
    lam: float | None = None
    options: Mapping[str, Any] = MappingProxyType({})
    """Passed to `infer` (steps, tol, k, refit, …) when the codes are solved."""
    codes: Tensor | None = None
    """The mode's codes of every replaced position of all the sequences (row-major; dense or CSR); None: solve."""
    encoder_codes: Tensor | None = None
    """The encoder's codes of the same positions, for keep_error (None: encode them)."""


@torch.no_grad()
def spliced_in_chunks(
    model: "HookedTransformer",
    sae_or_dictionary: "SAE | Dictionary",
    tokens: Int[Tensor, "B T"],
    hook_name: str,
    settings: Mapping[Hashable, SpliceSetting],
    *,
    max_positions: int,
    lengths: Int[Tensor, " B"] | None = None,
) -> dict[Hashable, "SpliceMetric"]:
    """Every setting's spliced CE / KL over all `tokens`, a chunk of whole sequences (≤ max_positions positions, at
    least one sequence) at a time: per chunk the clean and zero-ablated runs once, then each setting; memory is
    bounded by the chunk, not by the number of sequences. Returns one accumulated `SpliceMetric` per setting key."""
    tokens = _check(model, tokens, hook_name)
    if max_positions <= 0:
        raise SaeAmortError(f"max_positions must be positive, got {max_positions}")
    replace, scored = _positions(model, tokens, lengths)
    if not bool(scored.any()):
        raise _no_scored_tokens()
    per_row = replace.sum(dim=1).tolist()
    d_sae = resolve_dictionary(sae_or_dictionary).atoms.shape[0]
    for key, s in settings.items():
        _check_codes(s.codes, sum(per_row), d_sae, f"the given codes of {key}")
        _check_codes(s.encoder_codes, sum(per_row), d_sae, f"the given encoder codes of {key}")
    out = {key: SpliceMetric() for key in settings}
    step, offset = max(1, max_positions // tokens.shape[1]), 0
    for start in range(0, tokens.shape[0], step):
        rows = slice(start, start + step)
        stop = offset + sum(per_row[rows])
        if bool(scored[rows].any()):  # a chunk of one-token sequences predicts nothing
            chunk = tokens[rows]
            ref = splice_reference(model, chunk, hook_name, None if lengths is None else torch.as_tensor(lengths)[rows])
            cache: dict = {}  # codes solved in this chunk, shared by its settings
            for key, s in settings.items():
                given = {name: None if c is None else code_rows(c, offset, stop)
                         for name, c in (("codes", s.codes), ("encoder_codes", s.encoder_codes))}
                out[key].update(spliced_metrics(model, sae_or_dictionary, s.mode, chunk, hook_name, lam=s.lam,
                                                keep_error=s.keep_error, reference=ref, cache=cache, **given,
                                                **s.options))
            del ref, cache
        offset = stop
    return out

_SUMS = ("ce_clean", "ce_spliced", "ce_zero", "kl", "kl_zero")


class SpliceMetric(Metric):
    """Token-weighted spliced CE / KL over several `SpliceResult`s (one mode, one keep_error setting)."""

    name = "splice"
    input_kind = "splice"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.sums = dict.fromkeys(_SUMS, 0.0)
        self.settings: set[tuple[str, bool]] = set()

    def update(self, batch: SpliceResult) -> None:
        if not isinstance(batch, SpliceResult):
            raise SaeAmortError(f"the splice metric takes the SpliceResult of spliced_metrics(...), got "
                                f"{type(batch).__name__}")
        self.settings.add((batch.mode, batch.keep_error))
        self._check_settings()
        self.n += batch.n_tokens
        for key in _SUMS:
            self.sums[key] += getattr(batch, key) * batch.n_tokens

    def _check_settings(self) -> None:
        if len(self.settings) > 1:
            raise SaeAmortError(f"one splice accumulator per (mode, keep_error), got {sorted(self.settings)}")

    def merge(self, other: Metric) -> "SpliceMetric":
        self._check_mergeable(other)
        assert isinstance(other, SpliceMetric)
        self.settings |= other.settings
        self._check_settings()
        self.n += other.n
        for key in _SUMS:
            self.sums[key] += other.sums[key]
        return self

    def compute(self) -> dict[str, float | None]:
        keys = (*_SUMS, "ce_recovered", "ce_delta")
        values: dict[str, float | None] = dict.fromkeys(keys)
        values["n_tokens"] = float(self.n)
        if self.n == 0:
            return self._result(values, dict.fromkeys(keys, "no spliced tokens"))
        mean = {key: self.sums[key] / self.n for key in _SUMS}
        values.update(mean)
        values["ce_delta"] = mean["ce_spliced"] - mean["ce_clean"]
        skipped: dict[str, str] = {}
        values["ce_recovered"] = ce_recovered(mean["ce_clean"], mean["ce_spliced"], mean["ce_zero"])
        if values["ce_recovered"] is None:
            skipped["ce_recovered"] = ce_recovered_problem(mean["ce_clean"], mean["ce_zero"])
        return self._result(values, skipped)


register_metric(SpliceMetric.name, SpliceMetric)
