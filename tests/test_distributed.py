"""Distributed eval on CPU with gloo and 2 processes (torchrun): results equal the single-process run."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from saelens_amort.runners.eval_protocol import DEFAULT_MODES

ARGS = ["eval", "--model", "toy", "--sae", "toy/topk", "--tokens", "3072", "--calib-tokens", "512",
        "--batch-size", "512", "--splice-sequences", "2"]


def _run(cmd, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path):
    _run([sys.executable, "-m", "saelens_amort", *ARGS, "--out", str(tmp_path / "one")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
          "saelens_amort", *ARGS, "--out", str(tmp_path / "two")], tmp_path)
    one, two = pd.read_csv(tmp_path / "one" / "results.csv"), pd.read_csv(tmp_path / "two" / "results.csv")
    assert list(one.columns) == list(two.columns) and len(one) == len(two) == len(DEFAULT_MODES)
    timing = [c for c in one.columns if "second" in c]
    pd.testing.assert_frame_equal(one.drop(columns=timing), two.drop(columns=timing), rtol=1e-6, atol=1e-9)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["report.html", "results.csv", "results.json",
                                                                    "results.parquet", "run.json"]


def test_block_split_covers_every_item_once(monkeypatch):
    from saelens_amort import distributed

    for world in (1, 2, 3, 7):
        seen = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            monkeypatch.setattr(distributed, "world", lambda w=world: w)
            seen += list(distributed.block(10))
        assert seen == list(range(10))


FAILING_WORKER = """
import os, sys
from saelens_amort.runners import eval as ev
real = ev.evaluate_sae
def failing(*args, **kwargs):
    if int(os.environ["RANK"]) == 1:
        raise RuntimeError("rank 1 fails mid-run")
    return real(*args, **kwargs)
ev.evaluate_sae = failing
from saelens_amort.cli import main
sys.argv = ["saeamort", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_without_outputs(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FAILING_WORKER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *ARGS, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode != 0 and "rank 1 fails mid-run" in proc.stderr
    out = tmp_path / "out"
    assert not any((out / name).exists() for name in ("results.csv", "results.json", "results.parquet", "report.html"))


GATHER_SCRIPT = """
import sys, torch, numpy as np, torch.distributed as tdist
from saelens_amort import distributed
rank, world, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tdist.init_process_group("gloo", store=tdist.FileStore(store, world), rank=rank, world_size=world)
shared = torch.arange(5 * rank + 3, dtype=torch.float64).reshape(-1, 1) * (rank + 1)
value = {"rank": rank, "shared": shared, "again": [shared], "empty": torch.zeros(0, 4, dtype=torch.long),
         "bf16": torch.full((rank + 2,), 0.5 + rank, dtype=torch.bfloat16), "view": torch.arange(12)[::3],
         "mask": torch.tensor([True, False] * (rank + 1)), "array": np.arange(rank + 1), "text": "x" * rank}
class Box:
    def __init__(self, rows, t):
        self.rows, self.t, self.me = rows, t, None
from typing import NamedTuple
class SparseRows(NamedTuple):  # the shape of metrics.probes.SparseRows
    n: int
    d_sae: int
    row: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
box = Box(SparseRows(2, 7, torch.tensor([0, 1 + rank]), torch.tensor([3, 4]), torch.tensor([0.5, 1.5 * rank])), shared)
box.me = box
value["box"] = box
parts = distributed.gather(value)
assert value["box"] is box and box.rows.row.tolist() == [0, 1 + rank]  # the sender's objects are left as they were
if rank == 0:
    assert len(parts) == world and parts[0] is value
    for r, got in enumerate(parts):
        assert got["rank"] == r and got["text"] == "x" * r and got["array"].tolist() == list(range(r + 1))
        assert torch.equal(got["shared"], torch.arange(5 * r + 3, dtype=torch.float64).reshape(-1, 1) * (r + 1))
        assert got["again"][0] is got["shared"]  # one tensor named twice stays one tensor
        assert got["empty"].shape == (0, 4) and got["empty"].dtype == torch.long
        assert got["bf16"].dtype == torch.bfloat16 and got["bf16"].tolist() == [0.5 + r] * (r + 2)
        assert got["view"].tolist() == [0, 3, 6, 9] and got["mask"].tolist() == [True, False] * (r + 1)
        b = got["box"]
        assert b.me is b and b.t is got["shared"] and type(b.rows).__name__ == "SparseRows" and b.rows.n == 2
        assert b.rows.row.tolist() == [0, 1 + r] and b.rows.val.tolist() == [0.5, 1.5 * r]
    print("gathered", world)
tdist.destroy_process_group()
"""


def test_gather_sends_tensors_out_of_band_and_keeps_every_value(tmp_path):
    """distributed.gather over 3 gloo processes: every rank's object arrives whole on rank 0, tensors of every kind
    (shared, empty, bf16, strided views, bool; in dicts, lists, NamedTuples and objects' attributes, with a cycle)
    equal to what was sent, in the right places, and shared ones still shared."""
    outs = _gloo_processes(GATHER_SCRIPT, 3, tmp_path)
    assert outs[0].strip() == "gathered 3"


def _gloo_processes(script_text: str, world: int, tmp_path) -> list[str]:
    """Run `script_text` as `world` processes (argv: rank, world, a FileStore path); each must exit 0; their stdouts."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world), str(tmp_path / "store")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * world, [err[-2000:] for _, err in outs]
    return [out for out, _ in outs]


DEAL_SCRIPT = """
import sys, torch, torch.distributed as tdist
from saelens_amort import distributed
rank, world, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tdist.init_process_group("gloo", store=tdist.FileStore(store, world), rank=rank, world_size=world)
class Acc:  # a mergeable metric accumulator: merged in rank order it lists the ranks 0, 1, 2
    def __init__(self, ranks, rows):
        self.ranks, self.rows = ranks, rows
    def merge(self, other):
        self.ranks = self.ranks + other.ranks
        self.rows = torch.cat([self.rows, other.rows])
labels = ["amortized", "semi", "unamortized", "ksparse", "semi_ksparse"]
metrics = {v: {"a": Acc([rank], torch.full((rank + 1,), float(i))), "b": Acc([10 * rank], torch.zeros(0))}
           for i, v in enumerate(labels)}
mine = distributed.deal_metrics(metrics)
assert list(mine) == [v for i, v in enumerate(labels) if i % world == rank], (rank, list(mine))
for v, families in mine.items():
    i = labels.index(v)
    assert families["a"].ranks == list(range(world)) and families["b"].ranks == [10 * r for r in range(world)]
    assert families["a"].rows.tolist() == [float(i)] * sum(r + 1 for r in range(world))
print("dealt", rank, len(mine))
tdist.destroy_process_group()
"""


def test_deal_metrics_merges_each_variant_on_its_owner_in_rank_order(tmp_path):
    """distributed.deal_metrics over 3 gloo processes: each rank ends up with exactly its round-robin share of the
    variants, each merged from every rank's accumulator in rank order (tensors sent to ranks other than 0 too)."""
    outs = _gloo_processes(DEAL_SCRIPT, 3, tmp_path)
    assert [out.strip() for out in outs] == ["dealt 0 2", "dealt 1 2", "dealt 2 1"]
