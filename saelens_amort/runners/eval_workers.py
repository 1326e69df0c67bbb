"""`eval --workers N`: the same split as torchrun (`distributed.py`), on one machine's CPU cores, without torchrun.

The calling process becomes rank 0 of a gloo group and starts N − 1 worker processes (`python -m
saelens_amort.runners.eval_workers SPEC RANK`) that run the same config; ranks take contiguous blocks of the
activation batches and rank 0 alone writes the outputs, so the results equal one process's (float summation order
aside). Each process runs cores // N torch threads: the solvers' many small batched operations scale better across
processes than across threads (bench_distributed: 2 processes × 1 thread 1.85× one process × 2 threads).

Failures: a worker's stderr goes to a file; when a worker stops early, rank 0 reports its last line as the error
(`SaeAmortError`) and nothing is written; when rank 0 fails, the workers are stopped. The group is taken down when
the run ends, so a Python session can run eval again.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from saelens_amort.errors import SaeAmortError

JOIN_TIMEOUT_S = 300
"""Seconds rank 0 waits for every worker to start (import torch, reach the rendezvous) before giving up."""
STOP_GRACE_S = 10
"""Seconds a worker gets to exit after the run (or after rank 0 failed) before it is killed."""


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int, device: str) -> None:
    """--workers > 1 needs the CPU ('auto' passes here; the runner checks what it resolved to) and no torchrun."""
    if workers <= 1:
        return
    if device not in ("cpu", "auto"):
        raise SaeAmortError(f"--workers {workers} splits the work over CPU processes; on {device} use one process "
                            "(or torchrun --nproc-per-node, one per GPU)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SaeAmortError("--workers and torchrun both start processes; use one of them")


class Workers:
    """N − 1 worker processes started for a run of `config` (rank 0 is the calling process). Start them as early
    as possible (the command line does, before this process imports torch): their imports then overlap its own."""

    def __init__(self, workers: int, config: dict, out: Path, overwrite: bool) -> None:
        self.n = workers
        self.tmp = Path(tempfile.mkdtemp(prefix="saeamort-workers-"))
        self.threads = max(1, usable_cores() // workers)
        self.store = str(self.tmp / "store")
        spec = {"config": config, "out": str(out), "overwrite": overwrite, "world": workers, "threads": self.threads,
                "store": self.store}
        (self.tmp / "spec.json").write_text(json.dumps(spec))
        self.procs: dict[int, subprocess.Popen] = {}
        for rank in range(1, workers):
            with open(self.tmp / f"rank{rank}.err", "w") as err:
                self.procs[rank] = subprocess.Popen(
                    [sys.executable, "-m", __name__, str(self.tmp / "spec.json"), str(rank)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def stop(self, *, wait: bool) -> None:
        """Let the workers finish (after a successful run), else terminate them; then clean up."""
        _stop(self.procs, wait=wait)
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def local_workers(workers: "int | Workers", config: dict, out: Path, overwrite: bool) -> Iterator[None]:
    """Inside the block this process is rank 0 of the local processes (`workers`: a count, or workers already
    started for this run); no-op for 1."""
    if isinstance(workers, int) and workers <= 1:
        yield
        return
    import torch.distributed as tdist

    from saelens_amort.distributed import TIMEOUT_MINUTES
    from saelens_amort.inference.threads import process_threads

    ok = False
    pool = workers if isinstance(workers, Workers) else Workers(workers, config, out, overwrite)
    try:
        _wait_for_workers(pool.procs, pool.tmp)
        with process_threads(pool.threads):
            tdist.init_process_group("gloo", store=tdist.FileStore(pool.store, pool.n), rank=0, world_size=pool.n,
                                     timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
            try:
                yield
            except Exception as e:
                time.sleep(0.2)  # a worker's exit follows its broken connection closely
                stopped = _first_stopped(pool.procs, pool.tmp)
                if stopped is not None and not isinstance(e, SaeAmortError):
                    raise SaeAmortError(stopped) from None
                raise
        ok = True
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
        pool.stop(wait=ok)


def _wait_for_workers(procs: dict[int, subprocess.Popen], tmp: Path) -> None:
    """Until every worker has marked itself ready (it then joins the group), or one has stopped."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not all((tmp / f"ready{rank}").exists() for rank in procs):
        stopped = _first_stopped(procs, tmp)
        if stopped is not None:
            raise SaeAmortError(stopped)
        if time.monotonic() > deadline:
            raise SaeAmortError(f"the --workers processes did not start within {JOIN_TIMEOUT_S} s")
        time.sleep(0.05)


def _first_stopped(procs: dict[int, subprocess.Popen], tmp: Path) -> str | None:
    """'worker R stopped (exit C): <its last stderr line>' for the first worker that has exited non-zero."""
    for rank, proc in procs.items():
        code = proc.poll()
        if code is not None and code != 0:
            lines = [ln for ln in (tmp / f"rank{rank}.err").read_text(errors="replace").splitlines() if ln.strip()]
            return f"worker {rank} stopped (exit {code}): {lines[-1].strip() if lines else 'no message'}"
    return None


def _stop(procs: dict[int, subprocess.Popen], *, wait: bool) -> None:
    """Let the workers finish (after a successful run), else terminate them; kill what remains."""
    for proc in procs.values():
        if not wait:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _worker(spec_path: str, rank: int) -> None:
    """A worker process: join the group as `rank`, then run the same eval (rank 0 writes the outputs)."""
    import torch.distributed as tdist

    from saelens_amort.distributed import TIMEOUT_MINUTES
    from saelens_amort.inference.threads import process_threads
    from saelens_amort.runners.eval import run_eval
    from saelens_amort.runners.eval_config import EvalConfig

    _die_with_parent()
    spec = json.loads(Path(spec_path).read_text())
    (Path(spec_path).parent / f"ready{rank}").touch()
    store = tdist.FileStore(spec["store"], spec["world"])
    tdist.init_process_group("gloo", store=store, rank=rank, world_size=spec["world"],
                             timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    try:
        with process_threads(spec["threads"]):
            run_eval(EvalConfig.from_json(spec["config"]), Path(spec["out"]), overwrite=spec["overwrite"],
                     progress=False)
    finally:
        tdist.destroy_process_group()


def _die_with_parent() -> None:
    """On Linux, have the kernel end this worker when the process that started it ends (e.g. killed before it
    joined the group, which would otherwise leave this one waiting for the group's timeout)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent ended before the call above
        sys.exit(1)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
