"""Where an eval's minutes go: wall time per named stage, and a progress bar per SAE naming the current stage.

    stages = Stages(progress=True)
    with stages.stage("collect"): ...
    with stages.sae("toy/standard", n_batches):
        with stages.stage("calibrate λ"): ...
        for batch in ...:
            with stages.stage("solve semi"): ...
            stages.advance()

Stage names are shared by all SAEs ("solve semi" sums over every SAE's batches); `per_sae` keeps each SAE's own
split. Stages may nest (a metric's update inside a batch); each stage's time is its own wall time, nested ones
included. The bar is drawn on stderr only when stderr is a terminal, so logs and pipes stay clean.
The totals land in results.json ("timings") and feed benchmarks/bench_eval.py.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Stages:
    """Accumulated wall seconds per stage (overall and per SAE), with an optional per-SAE progress bar."""

    def __init__(self, *, progress: bool = False) -> None:
        self.started = time.time()
        """Epoch seconds when the run began (after the command's imports)."""
        self.seconds: dict[str, float] = defaultdict(float)
        self.per_sae: dict[str, dict[str, float]] = {}
        self._sae: str | None = None
        self._bar: Any = None
        self._task: Any = None
        self._progress = progress and _stderr_is_terminal()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._task is not None:
            self._bar.update(self._task, description=f"{self._sae}: {name}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] += dt
            if self._sae is not None:
                self.per_sae[self._sae][name] = self.per_sae[self._sae].get(name, 0.0) + dt

    @contextmanager
    def sae(self, spec: str, total: int) -> Iterator[None]:
        """One SAE's evaluation: `total` steps (its batches) for the bar, stage times also kept per SAE."""
        self._sae = spec
        self.per_sae.setdefault(spec, {})
        t0 = time.perf_counter()
        bar = None
        if self._progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                           TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            bar.start()
            self._bar, self._task = bar, bar.add_task(spec, total=total)
        try:
            yield
        finally:
            self.per_sae[spec]["total"] = self.per_sae[spec].get("total", 0.0) + time.perf_counter() - t0
            if bar is not None:
                bar.stop()
            self._sae, self._bar, self._task = None, None, None

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def as_json(self) -> dict[str, Any]:
        return {"started": self.started, "wall_seconds": time.time() - self.started,
                "stages": dict(self.seconds), "per_sae": self.per_sae}


def _stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal
