"""The eval's spliced CE / KL step (DESIGN §4): every variant, without and with the SAE error term, on the splice
sequences, a chunk of whole sequences (≤ --batch-size positions) at a time (`metrics.splice.spliced_in_chunks`).

No second solve: the sequences' non-BOS positions are the store's first rows (`SpliceTokens.store_rows`), which the
batch loop has already solved for every variant. `SpliceCodes` keeps those rows' codes per variant and the encoder's
(CSR on CPU, so wide dictionaries stay small), and the splice uses them as given. When the loop did not evaluate all of
those rows here (--tokens below the splice rows, or the rows belong to another rank's batches), each mode is solved
on the spliced activations instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from saelens_amort.inference import InferenceResult
from saelens_amort.inference.sparse_codes import csr_tensor, to_csr
from saelens_amort.metrics.splice import SpliceSetting, ce_recovered_problem, spliced_in_chunks
from saelens_amort.runners.eval_inputs import SpliceTokens
from saelens_amort.runners.eval_protocol import Variant


class SpliceCodes:
    """The batch loop's codes of the store's first `n_rows` rows: per variant label, and the encoder's."""

    def __init__(self, n_rows: int) -> None:
        self.n_rows = n_rows
        self.kept = 0
        """Rows kept so far (always the first ones: a batch is kept only where the previous one ended)."""
        self._parts: dict[str, list[Tensor]] = {}
        self._encoder: list[Tensor] = []

    def keep(self, first_row: int, results: Mapping[str, InferenceResult], encoded: InferenceResult | None) -> None:
        """Keep the splice rows among a batch starting at store row `first_row` (its rows are the results' rows)."""
        if first_row != self.kept or self.kept >= self.n_rows or not results:
            return
        n = min(self.n_rows - first_row, len(next(iter(results.values())).codes))
        for label, res in results.items():
            self._parts.setdefault(label, []).append(to_csr(res.codes[:n]))
        if encoded is not None:
            self._encoder.append(to_csr(encoded.codes[:n]))
        self.kept += n

    @property
    def complete(self) -> bool:
        """Every splice row was kept (else the splice solves)."""
        return self.n_rows > 0 and self.kept == self.n_rows

    def codes(self, label: str) -> Tensor | None:
        return cat_rows(self._parts[label]) if self.complete and label in self._parts else None

    def encoder_codes(self) -> Tensor | None:
        return cat_rows(self._encoder) if self.complete and self._encoder else None


def cat_rows(parts: Sequence[Tensor]) -> Tensor:
    """Row-wise concatenation of code blocks, all CSR (CSR result) or all dense."""
    if parts[0].layout != torch.sparse_csr:
        return torch.cat(list(parts))
    crows, nnz = [parts[0].crow_indices()[:1]], 0
    for p in parts:
        crows.append(p.crow_indices()[1:] + nnz)
        nnz += int(p.crow_indices()[-1])
    shape = (sum(p.shape[0] for p in parts), parts[0].shape[1])
    return csr_tensor(torch.cat(crows), torch.cat([p.col_indices() for p in parts]),
                      torch.cat([p.values() for p in parts]), shape)


def splice_columns(model, sae, hook: str, toks: SpliceTokens, variants: Sequence[Variant],
                   lam_of: Mapping[str, float | None], kept: SpliceCodes, max_positions: int
                   ) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Per variant label: its spliced CE / KL columns (with and without the error term) and its `skipped` notes."""
    encoder = kept.encoder_codes()
    settings = {(v.label, keep): SpliceSetting(v.mode, keep, lam_of[v.label], v.options, kept.codes(v.label),
                                               encoder if keep else None)
                for v in variants for keep in (False, True)}
    metrics = spliced_in_chunks(model, sae, toks.tokens, hook, settings, max_positions=max_positions,
                                lengths=toks.lengths)
    out = {}
    for v in variants:
        columns: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        for keep in (False, True):
            m = metrics[(v.label, keep)].compute()
            tag = "_keep_error" if keep else ""
            columns.update({"ce_clean": m["ce_clean"], "ce_zero": m["ce_zero"], f"ce_spliced{tag}": m["ce_spliced"],
                            f"ce_recovered{tag}": m["ce_recovered"], f"kl{tag}": m["kl"],
                            "splice/n_tokens": int(m["n_tokens"])})
            if m["ce_recovered"] is None:
                skipped[f"ce_recovered{tag}"] = ce_recovered_problem(m["ce_clean"], m["ce_zero"])
        out[v.label] = (columns, skipped)
    return out
