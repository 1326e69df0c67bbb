"""Interpretability views of an SAE's latents on a store of activations (codes from any inference mode).

- Top-activating contexts per latent: the `top_n` rows with the largest code, each with the `window` preceding
  tokens of the same sequence and the token itself (streamed: a running top-N per latent, memory O(d_sae · top_n)).
- Firing frequency per latent: log10 histogram, dead (f ≤ 1e-6) and dense (f > 0.1) counts.
Outputs (`write_views`): contexts.json, contexts.md, and report.html with, per latent, a plotly histogram of its
non-zero activations and its top contexts with the peak token highlighted.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.run_folder import record_run

DEAD = 1e-6
DENSE = 0.1
HIST_SAMPLE = 2000


@dataclass
class LatentViews:
    latents: list[int]
    contexts: dict[int, list[dict]]
    """latent → [{activation, tokens (window, text pieces), peak (index in tokens)}], strongest first."""
    values: dict[int, np.ndarray]
    """latent → sample of its non-zero activations."""
    frequency: np.ndarray
    """[d_sae] firing frequency."""
    n_rows: int
    mode: str
    lam: float | None


@torch.no_grad()
def latent_views(store, sae, tokenizer, *, latents: list[int] | None = None, n_latents: int = 16, top_n: int = 10,
                 window: int = 10, mode: str = "amortized", lam: float | None = None, batch_size: int = 2048
                 ) -> LatentViews:
    """Stream the store once: firing frequencies and running top-N rows per latent; then build the contexts."""
    from saelens_amort.inference import infer

    d_sae = sae.cfg.d_sae
    if latents is not None:
        bad = [j for j in latents if not 0 <= j < d_sae]
        if bad or not latents:
            raise SaeAmortError(f"latent {bad[0]} is out of range (d_sae={d_sae})" if bad else "empty latent list")
    counts = torch.zeros(d_sae, dtype=torch.float64)
    top_val = torch.full((d_sae, top_n), -torch.inf)
    top_row = torch.full((d_sae, top_n), -1, dtype=torch.long)
    tokens, docs, positions, samples = [], [], [], {}
    offset = 0
    for batch in store.iter_batches(batch_size):
        res = infer(batch.acts, sae, mode, lam=lam)
        lam = res.lam if res.lam is not None else lam
        z = res.codes.float()
        counts += (z > 0).sum(0).double()
        k = min(top_n, z.shape[0])
        v, r = z.T.topk(k, dim=1)
        cat_v, cat_r = torch.cat([top_val, v], 1), torch.cat([top_row, r + offset], 1)
        best = cat_v.topk(top_n, dim=1).indices
        top_val, top_row = cat_v.gather(1, best), cat_r.gather(1, best)
        for j in latents or []:
            nz = z[:, j][z[:, j] > 0]
            if nz.numel() and sum(len(a) for a in samples.get(j, [])) < HIST_SAMPLE:
                samples.setdefault(j, []).append(nz.numpy())
        tokens.append(batch.token_ids)
        docs.append(batch.doc_ids)
        positions.append(batch.positions)
        offset += z.shape[0]
    if offset == 0:
        raise SaeAmortError("the activation store is empty")
    freq = (counts / offset).numpy()
    if latents is None:  # the most frequently firing latents that are not dense
        order = np.argsort(-np.where(freq > DENSE, -1, freq))
        latents = [int(j) for j in order[:n_latents] if freq[j] > 0]
    tok, doc, pos = torch.cat(tokens), torch.cat(docs), torch.cat(positions)
    contexts = {}
    for j in latents:
        items = []
        for v, row in zip(top_val[j].tolist(), top_row[j].tolist()):
            if row < 0 or v <= 0:
                continue
            start = row
            while start > 0 and row - start < window and doc[start - 1] == doc[row] and pos[start - 1] < pos[start]:
                start -= 1
            pieces = _pieces(tokenizer, tok[start:row + 1].tolist())
            items.append({"activation": v, "row": row, "tokens": pieces, "peak": len(pieces) - 1})
        contexts[j] = items
    values = {j: np.concatenate(samples[j])[:HIST_SAMPLE] if j in samples else
              np.array([c["activation"] for c in contexts[j]]) for j in latents}
    return LatentViews(latents, contexts, values, freq, offset, mode, lam)


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    """Text pieces whose concatenation is the decoded window (spacing as the tokenizer decodes it)."""
    texts = [tokenizer.decode(ids[: i + 1]) for i in range(len(ids))]
    return [texts[0]] + [b[len(a):] if b.startswith(a) else " " + tokenizer.decode([t])
                         for a, b, t in zip(texts, texts[1:], ids[1:])]


def density_figure(freq: np.ndarray) -> go.Figure:
    live = freq[freq > 0]
    fig = go.Figure(go.Histogram(x=np.log10(live), nbinsx=50, hovertemplate="log10 f %{x}<br>latents %{y}<extra></extra>"))
    fig.update_layout(title=f"Feature density: {int((freq <= DEAD).sum())} dead (f ≤ 1e-6), "
                            f"{int((freq > DENSE).sum())} dense (f > 0.1) of {freq.size}",
                      xaxis_title="log10 firing frequency", yaxis_title="latents")
    return fig


def _context_html(item: dict) -> str:
    parts = [html.escape(t) for t in item["tokens"]]
    parts[item["peak"]] = f'<mark title="{item["activation"]:.4g}">{parts[item["peak"]]}</mark>'
    return f"<li><code>{item['activation']:.3g}</code> {''.join(parts)}</li>"


def write_views(views: LatentViews, out: Path, title: str, provenance: dict, run: dict) -> None:
    """The outputs in `out`, which records `run` (the interpret config; see run_folder)."""
    from saelens_amort.report import Section, write_report
    from saelens_amort.atomic import write_atomic

    record_run(out, "interpret", run)
    freq = views.frequency
    data = {"mode": views.mode, "lam": views.lam, "rows": views.n_rows, "dead": int((freq <= DEAD).sum()),
            "dense": int((freq > DENSE).sum()), "latents": {
                str(j): {"frequency": float(freq[j]), "contexts": views.contexts[j]} for j in views.latents}}
    write_atomic(out / "contexts.json", lambda p: p.write_text(json.dumps(data, indent=2)))
    md = [f"# {title}", "", f"mode {views.mode}, λ {views.lam}, {views.n_rows} tokens; {data['dead']} dead, "
          f"{data['dense']} dense latents", ""]
    for j in views.latents:
        md += [f"## latent {j} (firing frequency {freq[j]:.3g})", ""]
        md += [f"- {c['activation']:.3g}: " + "".join(c["tokens"][:-1]) + f"**{c['tokens'][-1]}**"
               for c in views.contexts[j]] + [""]
    write_atomic(out / "contexts.md", lambda p: p.write_text("\n".join(md)))
    sections = [Section("Feature density", density_figure(freq))]
    for j in views.latents:
        fig = go.Figure(go.Histogram(x=views.values[j], nbinsx=40))
        fig.update_layout(title=f"latent {j}: non-zero activations", xaxis_title="activation", yaxis_title="tokens",
                          height=260)
        sections.append(Section(f"Latent {j} (f = {freq[j]:.3g})", fig,
                                html="<ul>" + "".join(_context_html(c) for c in views.contexts[j]) + "</ul>"))
    write_report(out / "report.html", title, sections, provenance=provenance)
