"""Truth metrics: an SAE's latents and codes scored against a world's known features (DESIGN §10).

Latents are matched to true features once, by decoder direction: Hungarian assignment maximising cos(dᵢ, aⱼ)
between true atoms dᵢ and the SAE's unit effective atoms aⱼ (so the match depends on the dictionary, never on the
inference mode, and every mode of one SAE is scored on the same pairs). Then, streaming over tokens:

- recovered        = fraction of true features whose matched latent has cos ≥ 0.9;
- mean_match_cos   = mean cosine of the matched pairs;
- code_mcc         = mean over matched pairs of Pearson corr(sᵢ, z_{m(i)}) over tokens (a constant code counts 0);
- true_absorption  = among tokens where a parent and at least one of its children fire, the fraction where the
                     parent's latent is silent while an active child's latent fires;
- true_splitting   = among features fired on ≥ 20 tokens that have ≥ 2 latents with cos ≥ 0.7, the fraction served
                     by two such latents that each fire on ≥ 5 % of the feature's tokens and fire together on ≤ 10 %
                     of the rarer one's (disjoint parts of the feature).
State is fp64 sums and counts, so shards merge exactly.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.metrics.registry import Metric, MetricBatch, check_batch, register_metric

RECOVERED_COS = 0.9
SPLIT_COS = 0.7
SPLIT_MIN_TOKENS = 20
SPLIT_MIN_SHARE = 0.05
SPLIT_MAX_OVERLAP = 0.10
SPLIT_CANDIDATES = 4
"""Latents per feature considered for splitting (the most aligned ones with cos ≥ SPLIT_COS)."""


def match_latents(true_atoms: Float[Tensor, "n_true d"], sae_atoms: Float[Tensor, "d_sae d"]
                  ) -> tuple[Int[Tensor, " n_true"], Float[Tensor, " n_true"]]:
    """For each true feature, its Hungarian-matched latent (−1 when the SAE has fewer latents) and their cosine."""
    a = _unit(true_atoms)
    b = _unit(sae_atoms.to(a.device))
    cos = (a @ b.T).cpu().numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    latent = torch.full((a.shape[0],), -1, dtype=torch.long)
    sim = torch.zeros(a.shape[0], dtype=torch.float64)
    latent[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    sim[torch.as_tensor(rows)] = torch.as_tensor(cos[rows, cols], dtype=torch.float64)
    return latent, sim


def _unit(atoms: Tensor) -> Tensor:
    a = atoms.detach().to(torch.float64)
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


class TruthMetric(Metric):
    """Recovered features, code MCC, true absorption and true splitting of one SAE × mode against a world's truth.

    Options: `true_atoms [n_true, d]` and `parent [n_true]` (−1 for roots) from the world, `sae_atoms [d_sae, d]`
    (the SAE's effective decoder directions, any norm). Batches must carry `truth` (true codes per row).
    """

    name = "truth"

    def __init__(self, true_atoms: Tensor, parent: Tensor, sae_atoms: Tensor) -> None:
        super().__init__()
        if true_atoms.ndim != 2 or sae_atoms.ndim != 2 or true_atoms.shape[1] != sae_atoms.shape[1]:
            raise SaeAmortError(f"truth metric: true atoms {tuple(true_atoms.shape)} and SAE atoms "
                                f"{tuple(sae_atoms.shape)} must be [n, d] with the same d")
        if parent.shape != (true_atoms.shape[0],):
            raise SaeAmortError(f"truth metric: parent has shape {tuple(parent.shape)}, expected "
                                f"({true_atoms.shape[0]},)")
        self.n_true, self.d_sae = true_atoms.shape[0], sae_atoms.shape[0]
        self.latent, self.match_cos = match_latents(true_atoms, sae_atoms)
        self.parent = parent.long().cpu()
        cos = _unit(true_atoms) @ _unit(sae_atoms.to(true_atoms.device)).T
        top = torch.topk(cos, min(SPLIT_CANDIDATES, self.d_sae), dim=1)
        many = (top.values >= SPLIT_COS).sum(1) >= 2
        self.split_features = torch.nonzero(many).flatten().cpu()
        self.split_latents = top.indices[many].cpu()
        self.split_valid = (top.values[many] >= SPLIT_COS).cpu()
        self._key = (true_atoms.shape, sae_atoms.shape, float(self.match_cos.sum()))
        k = self.split_latents.shape[1] if self.split_latents.numel() else 0
        self.n = 0
        self.sums = torch.zeros(6, self.n_true, dtype=torch.float64)
        """Σs, Σz, Σs², Σz², Σsz of each matched pair over tokens, and the tokens each feature fires on."""
        self.absorb_tokens = 0
        self.absorbed = 0
        self.feat_tokens = torch.zeros(len(self.split_features), dtype=torch.float64)
        self.fires = torch.zeros(len(self.split_features), k, dtype=torch.float64)
        self.cofires = torch.zeros(len(self.split_features), k, k, dtype=torch.float64)

    def _options(self) -> dict:
        return {"key": self._key}

    def update(self, batch: MetricBatch) -> None:
        truth = batch.truth
        batch = check_batch(batch)
        if truth is None:
            raise SaeAmortError("truth metric: the batch carries no true codes (evaluate on a world built by "
                                "`saeamort world build`)")
        s = truth.to(torch.float64).cpu()
        codes = batch.codes.to(torch.float64).cpu()
        if s.shape != (codes.shape[0], self.n_true) or codes.shape[1] != self.d_sae:
            raise SaeAmortError(f"truth metric: true codes {tuple(s.shape)} / codes {tuple(codes.shape)} do not fit "
                                f"{self.n_true} true features and {self.d_sae} latents")
        z = torch.zeros_like(s)
        matched = self.latent >= 0
        z[:, matched] = codes[:, self.latent[matched]]
        self.n += s.shape[0]
        self.sums += torch.stack([s.sum(0), z.sum(0), s.square().sum(0), z.square().sum(0), (s * z).sum(0),
                                  (s > 0).sum(0)])
        self._update_absorption(s > 0, z > 0)
        if len(self.split_features):
            on = s[:, self.split_features] > 0                                   # [n, F]
            fire = (codes[:, self.split_latents] > 0) & self.split_valid         # [n, F, k]
            fire = fire & on[:, :, None]
            self.feat_tokens += on.sum(0)
            self.fires += fire.sum(0)
            f = fire.to(torch.float64)
            self.cofires += torch.einsum("nfa,nfb->fab", f, f)

    def _update_absorption(self, s_on: Tensor, z_on: Tensor) -> None:
        kids = torch.nonzero(self.parent >= 0).flatten()
        if not len(kids):
            return
        parents = self.parent[kids]
        both = s_on[:, kids] & s_on[:, parents]                                  # child and its parent fire
        child_latent_fires = both & z_on[:, kids]
        parent_silent = ~z_on[:, parents]
        uniq, inverse = torch.unique(parents, return_inverse=True)
        owner = torch.zeros(len(kids), len(uniq), dtype=torch.float64)
        owner[torch.arange(len(kids)), inverse] = 1.0                           # child → its parent's column
        any_child = (both.to(torch.float64) @ owner) > 0
        absorbed = ((child_latent_fires & parent_silent).to(torch.float64) @ owner) > 0
        self.absorb_tokens += int(any_child.sum())
        self.absorbed += int(absorbed.sum())

    def merge(self, other: Metric) -> TruthMetric:
        self._check_mergeable(other)
        assert isinstance(other, TruthMetric)
        self.n += other.n
        self.sums += other.sums
        self.absorb_tokens += other.absorb_tokens
        self.absorbed += other.absorbed
        self.feat_tokens += other.feat_tokens
        self.fires += other.fires
        self.cofires += other.cofires
        return self

    def compute(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {
            "recovered": float((self.match_cos >= RECOVERED_COS).double().mean()),
            "mean_match_cos": float(self.match_cos.mean()),
            "code_mcc": None, "true_absorption": None, "true_splitting": None,
        }
        skipped: dict[str, str] = {}
        if self.n < 2:
            return self._result(values, {k: "fewer than 2 tokens" for k in ("code_mcc", "true_absorption",
                                                                              "true_splitting")})
        s1, z1, s2, z2, sz = self.sums[:5] / self.n
        cov = sz - s1 * z1
        denom = ((s2 - s1.square()).clamp_min(0) * (z2 - z1.square()).clamp_min(0)).sqrt()
        live_truth = (s2 - s1.square()) > 0
        corr = torch.where(denom > 0, cov / torch.where(denom > 0, denom, 1.0), 0.0)
        if bool(live_truth.any()):
            values["code_mcc"] = float(corr[live_truth].mean())
        else:
            skipped["code_mcc"] = "no true feature fires"
        if self.absorb_tokens:
            values["true_absorption"] = self.absorbed / self.absorb_tokens
        else:
            skipped["true_absorption"] = "no token where a parent and one of its children fire"
        values["true_splitting"] = self._splitting()
        if values["true_splitting"] is None:
            skipped["true_splitting"] = f"no feature fired on ≥ {SPLIT_MIN_TOKENS} tokens"
        return self._result(values, skipped)

    def _splitting(self) -> float | None:
        eligible = int((self.sums[5] >= SPLIT_MIN_TOKENS).sum())
        if not eligible:
            return None
        if not len(self.split_features):
            return 0.0
        n_tok = self.feat_tokens
        share = self.fires / n_tok.clamp_min(1)[:, None]
        big = share >= SPLIT_MIN_SHARE
        rarer = torch.minimum(self.fires[:, :, None], self.fires[:, None, :])
        pair = big[:, :, None] & big[:, None, :] & (self.cofires <= SPLIT_MAX_OVERLAP * rarer)
        pair &= ~torch.eye(pair.shape[1], dtype=torch.bool)
        split = pair.flatten(1).any(1) & (n_tok >= SPLIT_MIN_TOKENS)
        return float(split.sum()) / eligible


register_metric(TruthMetric.name, TruthMetric)
