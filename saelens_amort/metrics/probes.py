"""k-sparse probes: F1@k and ΔF1 = F1@2 − F1@1 (the splitting proxy), on a held-out split (DESIGN §4).

Per binary task y: rank latents by |corr(z_j, y)| on the TRAIN split, fit a class-balanced logistic regression
(sklearn's model on standardised features, solved exactly by Newton: `logistic.py`) on the top-k latents of the train
split, and score binary F1 of the positive class on the held-out split, for k ∈ {1, 2, 5}. (The reference evaluates
on its training data; this never does.)

Label sources (both by default):
- `pseudo` — the paper's y = 1[‖x‖ > median ‖x‖], the median taken on the train split (x = original activations);
- `real` — the batch's `labels` (dataset classes or a token property), one-vs-rest per class over the rows whose label
  is known (≥ 0); reported per class (`real/<class>/f1@k`) and as the unweighted mean over the classes that could be
  scored (`real/f1@k`).

Split (deterministic, hash-free): a row is held out when `doc_id % 5 == 0`, so the tokens of one document never
straddle the splits; without doc_ids, when its running row index (from `start_row`) is ≡ 0 mod 5.

Sample (bounded memory): the FIRST `max_train_rows` / `max_test_rows` rows of each split, in stream order, are kept as
sparse codes (non-zero indices and values of all latents), ‖x‖ and label; rankings, the median, fits and scores all
use this sample. First-N (not a reservoir) makes `a.merge(b)` equal one pass over a's rows then b's, so distributed
workers can gather their samples in order. A worker that streams without doc_ids must be given `start_row` = the
number of rows before its own, for the row-index split to agree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from saelens_amort.metrics.logistic import fit_probe

from saelens_amort.metrics.registry import Metric, MetricBatch, check_batch, register_metric

SPLIT_MODULUS = 5
"""A row is held out when doc_id (or row index) % SPLIT_MODULUS == 0 (a 20 % test split)."""

MAX_TRAIN_ROWS = 32768
MAX_TEST_ROWS = 8192



class SparseRows(NamedTuple):
    """n rows of [n, d_sae] codes stored by their non-zeros."""

    n: int
    d_sae: int
    row: Tensor
    col: Tensor
    val: Tensor

    @classmethod
    def of(cls, codes: Tensor) -> "SparseRows":
        """The non-zeros of [n, d_sae] codes (on any device), kept on the CPU; indices as int32 (12 bytes per
        non-zero instead of 20: the main job keeps ~10⁶ of them per SAE and mode)."""
        row, col = codes.nonzero(as_tuple=True)
        return cls(codes.shape[0], codes.shape[1], row.int().cpu(), col.int().cpu(), codes[row, col].float().cpu())

    def head(self, r: int) -> "SparseRows":
        keep = self.row < r
        return SparseRows(min(r, self.n), self.d_sae, self.row[keep], self.col[keep], self.val[keep])

    def select(self, mask: Tensor) -> "SparseRows":
        """The rows where `mask` [n] is True, renumbered."""
        new_index = mask.long().cumsum(0) - 1
        keep = mask[self.row]
        return SparseRows(int(mask.sum()), self.d_sae, new_index[self.row[keep]].to(self.row.dtype), self.col[keep],
                          self.val[keep])

    def columns(self, cols: Tensor) -> Tensor:
        """Dense [n, len(cols)] fp64 values of the latents `cols`."""
        where = torch.full((self.d_sae,), -1, dtype=torch.long)
        where[cols] = torch.arange(len(cols))
        pos = where[self.col]
        keep = pos >= 0
        out = torch.zeros(self.n, len(cols), dtype=torch.float64)
        out[self.row[keep], pos[keep]] = self.val[keep].double()
        return out

    @staticmethod
    def cat(parts: list["SparseRows"], d_sae: int) -> "SparseRows":
        rows, offset = [], 0
        for p in parts:
            rows.append(p.row + offset)
            offset += p.n
        empty_i, empty_f = torch.zeros(0, dtype=torch.int32), torch.zeros(0)
        return SparseRows(
            offset, d_sae, torch.cat(rows) if rows else empty_i,
            torch.cat([p.col for p in parts]) if parts else empty_i,
            torch.cat([p.val for p in parts]) if parts else empty_f,
        )


class SplitSample:
    """The first `cap` rows of one split: sparse codes, ‖x‖, labels (-1 unknown)."""

    def __init__(self, cap: int) -> None:
        self.cap = int(cap)
        self.codes: list[SparseRows] = []
        self.norms: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.n = 0
        self.seen = 0
        """Rows of this split streamed (kept or not)."""

    def add(self, codes: SparseRows, norms: Tensor, labels: Tensor, seen: int | None = None) -> None:
        self.seen += codes.n if seen is None else seen
        room = self.cap - self.n
        if room <= 0 or codes.n == 0:
            return
        if codes.n > room:
            codes, norms, labels = codes.head(room), norms[:room], labels[:room]
        self.codes.append(codes)
        self.norms.append(norms)
        self.labels.append(labels)
        self.n += codes.n

    def merge(self, other: "SplitSample") -> None:
        seen = other.seen
        for codes, norms, labels in zip(other.codes, other.norms, other.labels):
            self.add(codes, norms, labels, seen=0)
        self.seen += seen

    def rows(self, d_sae: int) -> tuple[SparseRows, Tensor, Tensor]:
        norms = torch.cat(self.norms) if self.norms else torch.zeros(0, dtype=torch.float64)
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)
        return SparseRows.cat(self.codes, d_sae), norms, labels


class Task(NamedTuple):
    """One binary task on the sample: its key prefix, the train/test rows it uses and their 0/1 labels."""

    key: str
    train: SparseRows
    y_train: Tensor
    test: SparseRows
    y_test: Tensor


class LabelledSampleMetric(Metric):
    """Shared machinery of the probe and absorption families: the split, the first-N sample and the label tasks."""

    def __init__(
        self,
        *,
        pseudo: bool = True,
        real_name: str = "real",
        label_names: tuple[str, ...] | None = None,
        max_train_rows: int = MAX_TRAIN_ROWS,
        max_test_rows: int = MAX_TEST_ROWS,
        start_row: int = 0,
    ) -> None:
        super().__init__()
        self.pseudo = bool(pseudo)
        self.real_name = str(real_name)
        self.label_names = tuple(label_names) if label_names is not None else None
        self.train = SplitSample(max_train_rows)
        self.test = SplitSample(max_test_rows)
        self.row_index = int(start_row)
        self.d_sae: int | None = None
        self.has_labels = False
        """Some row had a known (≥ 0) label."""

    def _options(self) -> dict[str, Any]:
        return {"pseudo": self.pseudo, "real_name": self.real_name, "label_names": self.label_names,
                "max_train_rows": self.train.cap, "max_test_rows": self.test.cap}

    def update(self, batch: MetricBatch) -> None:
        batch = check_batch(batch)
        n = batch.n_rows
        if self.d_sae is not None and batch.codes.shape[1] != self.d_sae:
            raise ValueError(f"d_sae changed from {self.d_sae} to {batch.codes.shape[1]}")
        self.d_sae = batch.codes.shape[1]
        if batch.doc_ids is not None:
            is_test = batch.doc_ids % SPLIT_MODULUS == 0
        else:
            is_test = (torch.arange(n, device=batch.x.device) + self.row_index) % SPLIT_MODULUS == 0
        self.row_index += n
        labels = batch.labels.long().cpu() if batch.labels is not None else torch.full((n,), -1, dtype=torch.long)
        self.has_labels = self.has_labels or bool((labels >= 0).any())
        norms = batch.x.double().norm(dim=1).cpu()
        for split, mask in ((self.train, ~is_test), (self.test, is_test)):
            if split.n >= split.cap:
                split.seen += int(mask.sum())
                continue
            mask_cpu = mask.cpu()
            split.add(SparseRows.of(batch.codes[mask]), norms[mask_cpu], labels[mask_cpu])

    def merge(self, other: Metric) -> "LabelledSampleMetric":
        self._check_mergeable(other)
        assert isinstance(other, LabelledSampleMetric)
        if other.d_sae is not None:
            if self.d_sae is not None and other.d_sae != self.d_sae:
                raise ValueError(f"d_sae differs: {self.d_sae} vs {other.d_sae}")
            self.d_sae = other.d_sae
        self.train.merge(other.train)
        self.test.merge(other.test)
        self.row_index += other.row_index
        self.has_labels = self.has_labels or other.has_labels
        return self

    def class_name(self, c: int) -> str:
        if self.label_names is not None and 0 <= c < len(self.label_names):
            return self.label_names[c]
        return f"class{c}"

    def tasks(self) -> tuple[list[Task], dict[str, str], list[str]]:
        """The binary tasks on the sample, the task keys that cannot be scored with why, and the real class keys."""
        tasks: list[Task] = []
        reasons: dict[str, str] = {}
        d_sae = self.d_sae or 0
        train, train_norms, train_labels = self.train.rows(d_sae)
        test, test_norms, test_labels = self.test.rows(d_sae)
        if self.pseudo:
            if train.n == 0 or test.n == 0:
                reasons["pseudo"] = f"the {'train' if train.n == 0 else 'held-out'} split is empty"
            else:
                median = train_norms.median()
                tasks.append(Task("pseudo", train, train_norms > median, test, test_norms > median))
        class_keys: list[str] = []
        real = self.real_name
        if not self.has_labels:
            reasons[real] = "source has no labels"
            return tasks, reasons, class_keys
        classes = torch.unique(torch.cat([train_labels, test_labels]))
        classes = [int(c) for c in classes if c >= 0]
        if len(classes) < 2:
            reasons[real] = "fewer than 2 classes among the labelled rows"
            return tasks, reasons, class_keys
        tr_known, te_known = train_labels >= 0, test_labels >= 0
        tr, te = train.select(tr_known), test.select(te_known)
        for c in classes:
            key = f"{real}/{self.class_name(c)}"
            class_keys.append(key)
            if tr.n == 0 or te.n == 0:
                reasons[key] = f"no labelled rows on the {'train' if tr.n == 0 else 'held-out'} split"
                continue
            tasks.append(Task(key, tr, train_labels[tr_known] == c, te, test_labels[te_known] == c))
        return tasks, reasons, class_keys


def task_problem(task: Task) -> str | None:
    """Why a binary task cannot be scored (one class on train, no positives held out), or None."""
    if task.y_train.all() or not task.y_train.any():
        return "the train split has one class only"
    if not task.y_test.any():
        return "no positives on the held-out split"
    return None


def correlations(rows: SparseRows, y: Tensor) -> Tensor:
    """Pearson corr(z_j, y) per latent over `rows` (fp64; 0 for constant latents)."""
    n = max(rows.n, 1)
    y = y.double()
    my, vy = y.mean(), y.var(unbiased=False)
    val = rows.val.double()
    zeros = torch.zeros(rows.d_sae, dtype=torch.float64)
    mz = zeros.index_add(0, rows.col, val) / n
    ezz = zeros.index_add(0, rows.col, val.square()) / n
    ezy = zeros.index_add(0, rows.col, val * y[rows.row]) / n
    var_z = (ezz - mz.square()).clamp_min(0)
    live = (var_z > 1e-12 * ezz) & (vy > 0)
    corr = (ezy - mz * my) / (var_z * vy).sqrt()
    return torch.where(live, corr, torch.zeros_like(corr))


def rank_latents(rows: SparseRows, y: Tensor, *, signed: bool = False) -> Tensor:
    """Latent indices by descending |corr(z_j, y)|, or by descending corr(z_j, y) when `signed` (latents that fire
    FOR y = 1 first); ties: lower index first."""
    corr = correlations(rows, y)
    return torch.sort(-(corr if signed else corr.abs()), stable=True).indices


def probe_f1(task: Task, cols: Tensor, dense: tuple[Tensor, Tensor] | None = None) -> float:
    """Held-out binary F1 of a class-balanced logistic regression (sklearn's model, C=1, on standardised features,
    solved by `logistic.fit_probe`) on the latents `cols`, fitted on the train split.

    `dense`: the train and test columns of latents whose first len(cols) are `cols` (to reuse across k)."""
    k = len(cols)
    X_train, X_test = (task.train.columns(cols), task.test.columns(cols)) if dense is None else (
        dense[0][:, :k], dense[1][:, :k])
    probe = fit_probe(X_train.numpy(), task.y_train.bool().numpy())
    return binary_f1(task.y_test.bool(), torch.from_numpy(probe.predict(X_test.numpy())).bool())


def binary_f1(truth: Tensor, pred: Tensor) -> float:
    """F1 of the positive class: 2TP / (2TP + FP + FN), 0 when there is no positive in either (as scikit-learn's
    f1_score with zero_division=0, without importing scikit-learn in every eval process)."""
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


class ProbeMetric(LabelledSampleMetric):
    """F1@k for k in `ks` and ΔF1 = F1@2 − F1@1, for the pseudo-label and the real labels (see the module doc)."""

    name = "probes"

    def __init__(self, ks: tuple[int, ...] = (1, 2, 5), **sample_options: Any) -> None:
        super().__init__(**sample_options)
        self.ks = tuple(int(k) for k in ks)
        self._top: dict[str, list[int]] = {}

    def _options(self) -> dict[str, Any]:
        return super()._options() | {"ks": self.ks}

    def _task_keys(self, prefix: str) -> list[str]:
        keys = [f"{prefix}/f1@{k}" for k in self.ks]
        return keys + ([f"{prefix}/delta_f1"] if 1 in self.ks and 2 in self.ks else [])

    def compute(self) -> dict[str, float | None]:
        tasks, reasons, class_keys = self.tasks()
        prefixes = (["pseudo"] if self.pseudo else []) + [self.real_name] + class_keys
        values: dict[str, float | None] = {key: None for p in prefixes for key in self._task_keys(p)}
        skipped: dict[str, str] = {}
        for prefix, why in reasons.items():
            skipped.update({key: why for key in self._task_keys(prefix)})
        self._top = {}
        for task in tasks:
            why = task_problem(task)
            if why is not None:
                skipped.update({key: why for key in self._task_keys(task.key)})
                continue
            order = rank_latents(task.train, task.y_train)
            self._top[task.key] = order[: max(self.ks)].tolist()
            top = order[: min(max(self.ks), task.train.d_sae)]
            dense = (task.train.columns(top), task.test.columns(top))  # once per task; each k takes a prefix
            for k in self.ks:
                if k > task.train.d_sae:
                    skipped[f"{task.key}/f1@{k}"] = f"k={k} exceeds d_sae={task.train.d_sae}"
                else:
                    values[f"{task.key}/f1@{k}"] = probe_f1(task, order[:k], dense=dense)
            _delta(values, skipped, task.key)
        if class_keys and self.real_name not in reasons:
            for k in self.ks:
                mean_over_classes(values, skipped, f"{self.real_name}/f1@{k}", [f"{c}/f1@{k}" for c in class_keys])
            if 1 in self.ks and 2 in self.ks:
                mean_over_classes(values, skipped, f"{self.real_name}/delta_f1", [f"{c}/delta_f1" for c in class_keys])
        values["n_train"], values["n_test"] = float(self.train.n), float(self.test.n)
        return self._result(values, skipped)

    def artifacts(self) -> dict[str, Any]:
        """Top latents (by |corr| on train) per task, from the last `compute()`."""
        return {"top_latents": dict(self._top)}


def _delta(values: dict[str, float | None], skipped: dict[str, str], prefix: str) -> None:
    key = f"{prefix}/delta_f1"
    if key not in values:
        return
    f1, f2 = values.get(f"{prefix}/f1@1"), values.get(f"{prefix}/f1@2")
    if f1 is None or f2 is None:
        skipped[key] = skipped.get(f"{prefix}/f1@2") or skipped.get(f"{prefix}/f1@1") or "F1@1 or F1@2 missing"
    else:
        values[key] = f2 - f1


def mean_over_classes(values: dict[str, float | None], skipped: dict[str, str], key: str, parts: list[str]) -> None:
    """values[key] = the mean of the non-None values[parts] (skipped, with the first part's reason, if none)."""
    got = [values[p] for p in parts if values.get(p) is not None]
    if got:
        values[key] = sum(got) / len(got)  # type: ignore[arg-type]
    else:
        skipped[key] = next((skipped[p] for p in parts if p in skipped), "no class could be scored")


register_metric(ProbeMetric.name, ProbeMetric)
