"""Absorption rate, the paper's main/aux definition (DESIGN §4).

Per binary task y: main latent = top-1 latent by corr(z_j, y) on the TRAIN split, aux latents = the next
`n_aux` (5). Among the held-out positives (y = 1), the absorption rate is the fraction of rows where the main latent
does not fire (z_main ≤ 0) but at least one aux latent does (z > 0).

The ranking is by *signed* correlation (the paper's |corr| is what the probes use): main and aux must be latents that
fire FOR the task's positives. By |corr|, a one-vs-rest task can take a latent that fires on the other classes as
its main (with two classes, the complement class takes the other class's latent), which never fires on its own
positives and makes the rate meaningless.

Label sources, split and the bounded first-N sample are those of the probes (`metrics.probes`): the pseudo-label
y = 1[‖x‖ > median ‖x‖] and the real labels one-vs-rest per class (`real/<class>/absorption_rate`, with the
unweighted mean over scorable classes as `real/absorption_rate`). Also reported per source: the fraction of held-out
positives on which the main latent fires (`…/main_fire_rate`).
"""

from __future__ import annotations

from typing import Any

import torch

from saelens_amort.metrics.probes import LabelledSampleMetric, Task, mean_over_classes, rank_latents, task_problem
from saelens_amort.metrics.registry import register_metric

N_AUX = 5
"""Aux latents: the next-ranked after the main one."""

_STATS = ("absorption_rate", "main_fire_rate")


def absorption(task: Task, main: int, aux: list[int]) -> tuple[float, float]:
    """(absorption rate, main fire rate) among the held-out positives of `task`."""
    pos = task.test.select(task.y_test)
    main_fires = pos.columns(torch.tensor([main]))[:, 0] > 0
    aux_fires = (pos.columns(torch.tensor(aux, dtype=torch.long)) > 0).any(dim=1)
    n = max(pos.n, 1)
    return float((~main_fires & aux_fires).sum()) / n, float(main_fires.sum()) / n


class AbsorptionMetric(LabelledSampleMetric):
    """Absorption rate (main vs the next `n_aux` latents) for the pseudo-label and the real labels."""

    name = "absorption"

    def __init__(self, n_aux: int = N_AUX, **sample_options: Any) -> None:
        super().__init__(**sample_options)
        self.n_aux = int(n_aux)
        self._chosen: dict[str, dict[str, Any]] = {}

    def _options(self) -> dict[str, Any]:
        return super()._options() | {"n_aux": self.n_aux}

    def compute(self) -> dict[str, float | None]:
        tasks, reasons, class_keys = self.tasks()
        prefixes = (["pseudo"] if self.pseudo else []) + [self.real_name] + class_keys
        values: dict[str, float | None] = {f"{p}/{s}": None for p in prefixes for s in _STATS}
        skipped: dict[str, str] = {}
        for prefix, why in reasons.items():
            skipped.update({f"{prefix}/{s}": why for s in _STATS})
        self._chosen = {}
        for task in tasks:
            why = task_problem(task)
            if why is None and task.train.d_sae < 2:
                why = f"d_sae={task.train.d_sae} leaves no aux latent"
            if why is not None:
                skipped.update({f"{task.key}/{s}": why for s in _STATS})
                continue
            order = rank_latents(task.train, task.y_train, signed=True)[: 1 + self.n_aux].tolist()
            main, aux = order[0], order[1:]
            self._chosen[task.key] = {"main": main, "aux": aux}
            rate, fire = absorption(task, main, aux)
            values[f"{task.key}/absorption_rate"], values[f"{task.key}/main_fire_rate"] = rate, fire
        if class_keys and self.real_name not in reasons:
            for s in _STATS:
                mean_over_classes(values, skipped, f"{self.real_name}/{s}", [f"{c}/{s}" for c in class_keys])
        values["n_train"], values["n_test"] = float(self.train.n), float(self.test.n)
        return self._result(values, skipped)

    def artifacts(self) -> dict[str, Any]:
        """Main and aux latents per task, from the last `compute()`."""
        return {"latents": dict(self._chosen)}


register_metric(AbsorptionMetric.name, AbsorptionMetric)
