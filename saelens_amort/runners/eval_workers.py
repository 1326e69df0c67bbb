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
    """--workers > 1 needs the CPU and no torchrun around it."""
    if workers <= 1:
        return
    if device != "cpu":
        raise SaeAmortError(f"--workers {workers} splits the work over CPU processes; on {device} use one process "
                            "(or torchrun --nproc-per-node, one per GPU)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SaeAmortError("--workers and torchrun both start processes; use one of them")


@contextmanager
def local_workers(workers: int, config: dict, out: Path, overwrite: bool) -> Iterator[None]:
    """Inside the block this process is rank 0 of `workers` local processes running `config` (no-op for 1)."""
    if workers <= 1:
        yield
        return
    import torch
    import torch.distributed as tdist

    from saelens_amort.distributed import TIMEOUT_MINUTES

    tmp = Path(tempfile.mkdtemp(prefix="saeamort-workers-"))
    threads = max(1, usable_cores() // workers)
    spec = {"config": config, "out": str(out), "overwrite": overwrite, "world": workers, "threads": threads,
            "store": str(tmp / "store")}
    (tmp / "spec.json").write_text(json.dumps(spec))
    procs: dict[int, subprocess.Popen] = {}
    old_threads = torch.get_num_threads()
    ok = False
    try:
        for rank in range(1, workers):
            with open(tmp / f"rank{rank}.err", "w") as err:
                procs[rank] = subprocess.Popen([sys.executable, "-m", __name__, str(tmp / "spec.json"), str(rank)],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        _wait_for_workers(procs, tmp)
        torch.set_num_threads(threads)
        store = tdist.FileStore(spec["store"], workers)
        tdist.init_process_group("gloo", store=store, rank=0, world_size=workers,
                                 timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
        try:
            yield
        except Exception as e:
            stopped = _first_stopped(procs, tmp)
            if stopped is not None and not isinstance(e, SaeAmortError):
                raise SaeAmortError(stopped) from None
            raise
        ok = True
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
        torch.set_num_threads(old_threads)
        _stop(procs, wait=ok)
        shutil.rmtree(tmp, ignore_errors=True)


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
    time.sleep(0.2)  # a worker's exit follows its broken connection closely
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
    import torch
    import torch.distributed as tdist

    from saelens_amort.distributed import TIMEOUT_MINUTES
    from saelens_amort.runners.eval import run_eval
    from saelens_amort.runners.eval_config import EvalConfig

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    (Path(spec_path).parent / f"ready{rank}").touch()
    store = tdist.FileStore(spec["store"], spec["world"])
    tdist.init_process_group("gloo", store=store, rank=rank, world_size=spec["world"],
                             timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    try:
        run_eval(EvalConfig.from_json(spec["config"]), Path(spec["out"]), overwrite=spec["overwrite"],
                 progress=False)
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
