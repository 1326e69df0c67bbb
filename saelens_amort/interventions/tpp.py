"""Targeted probe perturbation (TPP, DESIGN §5): which latents carry a class, found with any inference mode.

Documents are the unit: the hook's activations and the codes are pooled per document (mean over its tokens, or its
last token). Per class c, a class-vs-rest logistic probe w_c (sklearn, on standardised pooled activations) is fitted
on the TRAIN documents (doc_id % 5 ≠ 0). Latent scores on the train documents:

    s_j = ⟨D_j, w_c⟩ · (E[z_j | c] − E[z_j | ¬c])       D_j = the latent's decoder direction in activation space

and the top-M latents are class c's selection. Ablating a set S removes its contribution, x − (decode(z) −
decode(z with S zeroed)) — exact per token for every SAE-Lens input normalisation (affine in the reconstruction
given x) and linear, so it is applied to the pooled documents. TPP score of class i at M:

    TPP_i = Δacc_i(S_i) − mean_{c ≠ i} Δacc_c(S_i)       Δacc_c(S) = probe c's held-out accuracy drop when S is ablated

and TPP(M) is its mean over the classes. Random latents of the same count give the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.runners.tpp_config import POOLING

HELD_OUT_MODULUS = 5


@dataclass
class PooledDocs:
    """Per document: pooled activations and codes, label, split; and the per-token rows they were pooled from."""

    acts: Tensor
    """[n_docs, d_in] pooled activations."""
    codes: Tensor
    """[n_docs, d_sae] pooled codes (SAE code space)."""
    labels: np.ndarray
    test: np.ndarray
    """Held-out documents (doc_id % 5 == 0)."""
    label_names: tuple[str, ...]
    token_codes: Tensor = field(repr=False)
    """[n_tokens, d_sae] codes of the labelled tokens."""
    token_acts: Tensor = field(repr=False)
    doc_index: Tensor = field(repr=False)
    """[n_tokens] position of each kept token's document in the pooled arrays."""
    pooling: str = "mean"
    lam: float | None = None
    mode: str = "amortized"

    def pool(self, t: Tensor) -> Tensor:
        """Per-token rows [n_tokens, …] pooled per document [n_docs, …] (this collection's pooling)."""
        return pool_rows(t, self.doc_index, self.acts.shape[0], self.pooling)


def pool_rows(t: Tensor, index: Tensor, n: int, pooling: str) -> Tensor:
    """Mean over each document's rows, or its last row (rows in stream order); fp32."""
    if pooling == "mean":
        count = torch.zeros(n).index_add_(0, index, torch.ones(len(index)))
        return torch.zeros(n, t.shape[1]).index_add_(0, index, t.float()) / count[:, None]
    last = torch.full((n,), -1, dtype=torch.long).scatter_reduce_(0, index, torch.arange(len(index)), "amax")
    return t[last].float()


def pool_documents(store, sae, mode: str = "amortized", *, lam: float | None = None, pooling: str = "mean",
                   batch_size: int = 2048, **infer_kwargs: Any) -> PooledDocs:
    """Codes of every stored token in `mode`, pooled per labelled document (see the module docstring)."""
    from saelens_amort.inference import infer

    if pooling not in POOLING:
        raise SaeAmortError(f"pooling must be one of {', '.join(POOLING)}, got {pooling!r}")
    if store.label_names is None:
        raise SaeAmortError("TPP needs class labels: use a labelled source (toy, or a .jsonl/.parquet with `label`)")
    acts, codes, docs, labels = [], [], [], []
    for batch in store.iter_batches(batch_size):
        keep = batch.labels >= 0
        if not bool(keep.any()):
            continue
        x = batch.acts[keep]
        res = infer(x, sae, mode, lam=lam, **infer_kwargs)
        lam = res.lam if res.lam is not None else lam
        acts.append(x)
        codes.append(res.codes.float())
        docs.append(batch.doc_ids[keep])
        labels.append(batch.labels[keep])
    if not acts:
        raise SaeAmortError("no labelled tokens in the activation store")
    x, z, doc, lab = torch.cat(acts), torch.cat(codes), torch.cat(docs), torch.cat(labels)
    uniq, index = torch.unique(doc, return_inverse=True)
    n = uniq.numel()
    doc_label = torch.zeros(n, dtype=torch.long).scatter_(0, index, lab)
    return PooledDocs(pool_rows(x, index, n, pooling), pool_rows(z, index, n, pooling), doc_label.numpy(),
                      (uniq % HELD_OUT_MODULUS == 0).numpy(), tuple(store.label_names), token_codes=z, token_acts=x,
                      doc_index=index, pooling=pooling, lam=lam, mode=mode)


def removal(docs: PooledDocs, sae, latents: list[int]) -> Tensor:
    """[n_docs, d_in] pooled contribution of `latents` (what ablating them subtracts from the activations)."""
    from saelens_amort.saes import Dictionary

    d = Dictionary.of(sae)
    x, z = docs.token_acts, docs.token_codes
    u_s = z[:, latents].to(d.atoms.dtype) * d.norms[latents]
    bias = d.bias.expand(x.shape[0], -1)
    contrib = d.to_input_space(u_s @ d.atoms[latents] + bias, x) - d.to_input_space(bias, x)
    return docs.pool(contrib)


class ClassProbes:
    """One class-vs-rest logistic probe per class on standardised pooled activations (train documents)."""

    def __init__(self, docs: PooledDocs, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        X = docs.acts.numpy()
        train = ~docs.test
        self.classes = sorted(int(c) for c in np.unique(docs.labels[train]))
        if len(self.classes) < 2:
            raise SaeAmortError("TPP needs documents of at least two classes in the train split")
        self.mean, self.std = X[train].mean(0), X[train].std(0) + 1e-6
        self.probes = {}
        for c in self.classes:
            clf = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
            clf.fit((X[train] - self.mean) / self.std, docs.labels[train] == c)
            self.probes[c] = clf

    def direction(self, c: int) -> np.ndarray:
        """w_c in activation space (the standardisation folded in)."""
        return self.probes[c].coef_[0] / self.std

    def accuracy(self, X: np.ndarray, labels: np.ndarray, c: int) -> float:
        return float((self.probes[c].predict((X - self.mean) / self.std) == (labels == c)).mean())


def latent_scores(docs: PooledDocs, sae, probes: ClassProbes, c: int) -> np.ndarray:
    """s_j for class c on the train documents (module docstring)."""
    from saelens_amort.saes import Dictionary

    if c not in probes.classes:
        raise SaeAmortError(f"class id {c} is not among the labels {probes.classes} "
                            f"({', '.join(docs.label_names)})")
    d = Dictionary.of(sae)
    decoder = (d.atoms * d.norms[:, None]).float().numpy()  # D_j: z_j's direction in the SAE's input space
    train = ~docs.test
    z = docs.codes.numpy()[train]
    y = docs.labels[train] == c
    diff = z[y].mean(0) - z[~y].mean(0)
    return (decoder @ probes.direction(c)) * diff


def select_latents(docs: PooledDocs, sae, probes: ClassProbes, c: int, top_m: int) -> tuple[list[int], np.ndarray]:
    """Class c's top-M latents by score, and all scores."""
    scores = latent_scores(docs, sae, probes, c)
    if not 1 <= top_m <= scores.size:
        raise SaeAmortError(f"--top-m must be in 1 … d_sae={scores.size}, got {top_m}")
    return np.argsort(-scores)[:top_m].tolist(), scores


def tpp_matrix(docs: PooledDocs, sae, probes: ClassProbes, selections: dict[int, list[int]]
               ) -> dict[int, dict[int, float]]:
    """Δacc_c(S_i) for every selected class i and every probe class c, on the held-out documents."""
    X, test, labels = docs.acts.numpy(), docs.test, docs.labels
    clean = {c: probes.accuracy(X[test], labels[test], c) for c in probes.classes}
    out = {}
    for i, latents in selections.items():
        X_abl = (docs.acts - removal(docs, sae, latents)).numpy()
        out[i] = {c: clean[c] - probes.accuracy(X_abl[test], labels[test], c) for c in probes.classes}
    return out


def tpp_score(drops: dict[int, dict[int, float]]) -> tuple[float, dict[int, float]]:
    """Mean over classes of Δacc_i(S_i) − mean_{c≠i} Δacc_c(S_i), and the per-class scores."""
    per = {i: d[i] - float(np.mean([v for c, v in d.items() if c != i])) for i, d in drops.items()}
    return float(np.mean(list(per.values()))), per
