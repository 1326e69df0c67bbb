"""The `saeamort` entry through real subprocesses: usage errors are one stderr line with exit 2, Ctrl-C exits 130
with one line at any point (imports included), and `--help`, `modes`, usage errors and option errors start without
torch, SAE-Lens, TransformerLens or pandas."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_user_error, saeamort

HEAVY = ("torch", "sae_lens", "transformer_lens", "pandas")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["collect", "--tokens", "many"], r"Invalid value for '--tokens'.*integer"),
        (["collect", "--tokens", "1e23"], r"Invalid value for '--tokens'"),
        (["collect", "--tokens", str(10**23)], r"--tokens must be at most 10,000,000,000"),
        (["collect", "--no-such-option"], r"No such option: --no-such-option.*saeamort collect --help"),
        (["patch", "--ablate", "3"], r"Missing option '--prompt'"),
        (["no-such-command"], r"No such command"),
    ],
)
def test_usage_error_is_one_line_exit_2(args, pattern):
    assert_user_error(saeamort(*args), pattern)


def _imports_after(argv: list[str]) -> dict:
    """Run the CLI entry on `argv` in a fresh interpreter; report its exit status and what it imported."""
    code = (
        "import json, os, sys\n"
        "from saelens_amort.cli import main\n"
        "status = 0\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        f"print(json.dumps(dict(status=status, heavy=[m for m in {HEAVY!r} if m in sys.modules],\n"
        "                       mps_fallback=os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["modes"], ["collect", "--tokens", "x"]],
                         ids=["help", "eval-help", "modes", "usage-error"])
def test_start_up_imports_nothing_heavy(argv):
    seen = _imports_after(argv)
    assert seen["heavy"] == [], f"{argv} imported {seen['heavy']}"
    assert seen["status"] == (2 if argv[-1] == "x" else 0)
    assert seen["mps_fallback"] == "1"  # set before torch can load: MPS runs what Metal lacks on the CPU


OPTION_ERRORS = {
    "protocol": (["eval", "--protocol", "bogus"], r"unknown --protocol 'bogus'"),
    "lambda": (["eval", "--lambda", "bogus"], r"unknown --lambda 'bogus'"),
    "target": (["sweep-semi", "--lambda-target", "bogus"], r"unknown --lambda-target 'bogus'"),
    "mode": (["eval", "--modes", "semi,bogus"], r"unknown mode\(s\) bogus;"),
    "metric": (["eval", "--metrics", "bogus"], r"unknown metric\(s\) bogus;"),
    "device": (["eval", "--device", "cuda:x"], r"unknown --device 'cuda:x'"),
    "dtype": (["eval", "--sae-dtype", "fp8"], r"unknown --sae-dtype 'fp8'"),
    "calib": (["eval", "--tokens", "10", "--calib-tokens", "100"], r"smaller than the calibration slice"),
    "frontier-grid": (["frontier", "--k-multipliers", "0"], r"--k-multipliers must be positive"),
    "train-arch": (["train", "--arch", "bogus", "--out", "o"], r"unknown architecture 'bogus'"),
    "tpp-pooling": (["tpp", "--pooling", "bogus"], r"--pooling must be one of"),
    "select-mode": (["select-latents", "--class-id", "0", "--mode", "x"], r"unknown mode\(s\) x;"),
    "gis-kind": (["gis", "--kind", "bogus"], r"--kind must be one of"),
    "interpret-mode": (["interpret", "--mode", "bogus"], r"unknown mode\(s\) bogus;"),
    "alphas": (["alpha-sweep", "--alphas", "x"], r"--alphas must be comma-separated numbers"),
    "domains": (["cross-domain", "--domain-a", "toy", "--domain-b", "toy"], r"--domain-a and --domain-b must differ"),
    "collect-dtype": (["collect", "--dtype", "bogus"], r"unknown --dtype 'bogus'; use one of float32, float16, "
                                                         r"bfloat16$"),
    "collect-context": (["collect", "--context-size", "1"], r"--context-size must be at least 2, got 1"),
    "collect-layer": (["collect", "--model", "gpt2"], r"--model gpt2: give --layer L"),
    "dynamics-mode": (["dynamics", "--checkpoints", "c", "--modes", "x"], r"unknown mode\(s\) x;"),
    "sweep-features": (["alpha-sweep", "--features", "missing.csv"], r"feature file missing.csv does not exist"),
    "sweep-no-layer": (["alpha-sweep", "--features", "no_layer.csv"], r"no_layer.csv lacks column\(s\) layer;"),
    "sweep-bad-csv": (["alpha-sweep", "--features", "long_row.csv"], r"cannot read long_row.csv as CSV \(line 2 "),
    "sweep-yaml-type": (["alpha-sweep", "--features", "f.csv", "--config", "typo.yaml"],
                        r"--config typo.yaml: percentile must be a number, got 'lots'"),
    "sweep-percentile": (["alpha-sweep", "--features", "f.csv", "--percentile", "150"],
                         r"--percentile must be in \[0, 100\)"),
    "sweep-layers": (["alpha-sweep", "--features", "f.csv", "--layers", "0-3"], r"--layers picks layers of a release"),
    "sweep-mode": (["alpha-sweep", "--features", "f.csv", "--mode", "bogus"], r"unknown mode\(s\) bogus;"),
    "sweep-no-alphas": (["alpha-sweep", "--features", "f.csv", "--alphas", ","], r"--alphas is empty: give at least one value"),
    "collect-source-missing": (["collect", "--source", "missing.txt"],
                               r"source file /\S*/missing.txt does not exist; give an existing"),
    "eval-source-suffix": (["eval", "--source", "nope.csv"], r"unknown source 'nope.csv'; use toy, toy:news"),
    "eval-source-existing-suffix": (["eval", "--source", "f.csv"], r"cannot read /\S*/f.csv: unknown extension '.csv'"),
    "source-folder": (["frontier", "--source", "."], r"cannot read /\S*: unknown extension '\(none\)'"),
    "source-hf-no-name": (["collect", "--source", "hf:"], r"hf: source needs a dataset name"),
    "source-hf-no-name-split": (["tpp", "--source", "hf:@test"], r"hf: source needs a dataset name"),
    "source-toy": (["collect", "--source", "toy:bogus"], r"unknown toy domain 'bogus'; use one of: toy, toy:news, "
                                                         r"toy:code$"),
    "train-source": (["train", "--source", "docs.jsonl", "--out", "o"], r"source file /\S*/docs.jsonl does not exist"),
    "sweep-source": (["alpha-sweep", "--features", "f.csv", "--source", "toy:x"], r"unknown toy domain 'x'"),
    "cross-domain-source": (["cross-domain", "--domain-b", "b.parquet"], r"source file /\S*/b.parquet does not exist"),
    "interpret-source": (["interpret", "--source", "hf:"], r"hf: source needs a dataset name"),
    "gis-source": (["gis", "--source", "wikitext"], r"unknown source 'wikitext'"),
    "dynamics-source": (["dynamics", "--checkpoints", "c", "--source", "toy:"], r"unknown toy domain ''"),
    "select-source": (["select-latents", "--class-id", "0", "--source", "a.txt"], r"source file /\S*/a.txt does not"),
    "sweep-yaml-source": (["alpha-sweep", "--features", "f.csv", "--config", "src.yaml"], r"unknown toy domain 'x'"),
    "sweep-no-features": (["alpha-sweep", "--features", "empty.csv"], r"no features to sweep in empty.csv"),
    "patch-mode": (["patch", "--prompt", "x", "--ablate", "3", "--mode", "bogus"], r"unknown mode\(s\) bogus;"),
    "patch-no-latent": (["patch", "--prompt", "x", "--ablate", ""], r"give at least one latent"),
    "tpp-top-m": (["tpp", "--top-m", "0,5"], r"--top-m needs positive integers, got \[0, 5\]"),
    "train-yaml-source": (["train", "--config", "src.yaml", "--out", "o"], r"unknown toy domain 'x'"),
}
SWEEP_FILES = {"f.csv": "layer,feature\n2,3\n", "no_layer.csv": "feature,label\n3,a\n",
               "long_row.csv": "layer,feature\n2,3,4\n", "typo.yaml": "percentile: lots\n",
               "src.yaml": "source: toy:x\n", "empty.csv": "layer,feature\n"}
"""Inputs the alpha-sweep cases read (every case runs in a folder holding just these)."""


@pytest.mark.parametrize(("argv", "pattern"), OPTION_ERRORS.values(), ids=OPTION_ERRORS.keys())
def test_option_errors_answer_before_torch_loads(argv, pattern, tmp_path, monkeypatch):
    """Each command's options, and the alpha-sweep's config and feature files, are checked before anything imports
    torch or pandas (the device option checks only its spelling; the runner resolves `auto` and checks
    availability), so a bad option answers at once: one error line, exit 2, nothing written."""
    for name, text in SWEEP_FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    seen = _imports_after(argv)
    assert seen["status"] == 2
    assert seen["heavy"] == [], f"{argv} imported {seen['heavy']}"
    lines = [ln for ln in seen["stderr"].splitlines() if ln.strip()]
    assert len(lines) == 1 and re.match(f"saeamort: error: .*{pattern}", lines[0]), seen["stderr"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SWEEP_FILES)  # nothing written


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "saelens_amort", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}: {proc.stderr.read()}"
        if ready():
            return
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def _interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def _assert_interrupted(status: int, stderr: str) -> None:
    assert status == 130, (status, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("saeamort: interrupted"), stderr


def test_ctrl_c_while_torch_is_importing_exits_130(tmp_path):
    proc = _start(["collect", "--model", "toy", "--tokens", "3000", "--out", str(tmp_path / "acts")])
    maps = Path(f"/proc/{proc.pid}/maps")
    _wait_for(proc, lambda: "libtorch" in maps.read_text(), "torch loading")
    _assert_interrupted(*_interrupt(proc))


@pytest.mark.slow
def test_ctrl_c_mid_run_exits_130_and_keeps_finished_shards(tmp_path):
    out = tmp_path / "acts"
    proc = _start(["collect", "--model", "toy", "--layer", "2", "--tokens", "1000000", "--shard-tokens", "1000",
                   "--batch-size", "4", "--out", str(out)])
    _wait_for(proc, lambda: any(out.glob("shard_*.safetensors")), "first shard")
    _assert_interrupted(*_interrupt(proc))
    assert any(out.glob("shard_*.safetensors"))
