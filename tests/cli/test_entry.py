"""The `saeamort` entry through real subprocesses: usage errors are one stderr line with exit 2, Ctrl-C exits 130
with one line at any point (imports included), and `--help`, `modes` and usage errors start without torch, SAE-Lens
or TransformerLens."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_user_error, saeamort

HEAVY = ("torch", "sae_lens", "transformer_lens")


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
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["modes"], ["collect", "--tokens", "x"]],
                         ids=["help", "eval-help", "modes", "usage-error"])
def test_start_up_imports_nothing_heavy(argv):
    seen = _imports_after(argv)
    assert seen["heavy"] == [], f"{argv} imported {seen['heavy']}"
    assert seen["status"] == (2 if argv[-1] == "x" else 0)
    assert seen["mps_fallback"] == "1"  # set before torch can load: MPS runs what Metal lacks on the CPU


OPTION_ERRORS = {
    "protocol": ["eval", "--protocol", "bogus"], "lambda": ["eval", "--lambda", "bogus"],
    "target": ["sweep-semi", "--lambda-target", "bogus"], "mode": ["eval", "--modes", "semi,bogus"],
    "metric": ["eval", "--metrics", "bogus"], "device": ["eval", "--device", "cuda:x"],
    "dtype": ["eval", "--sae-dtype", "fp8"], "calib": ["eval", "--tokens", "10", "--calib-tokens", "100"],
    "frontier-grid": ["frontier", "--k-multipliers", "0"], "train-arch": ["train", "--arch", "bogus", "--out", "o"],
    "tpp-pooling": ["tpp", "--pooling", "bogus"], "select-mode": ["select-latents", "--class-id", "0", "--mode", "x"],
    "gis-kind": ["gis", "--kind", "bogus"], "interpret-mode": ["interpret", "--mode", "bogus"],
    "alphas": ["alpha-sweep", "--alphas", "x"], "domains": ["cross-domain", "--domain-a", "toy", "--domain-b", "toy"],
}


@pytest.mark.parametrize("argv", OPTION_ERRORS.values(), ids=OPTION_ERRORS.keys())
def test_option_errors_answer_before_torch_loads(argv, tmp_path, monkeypatch):
    """Each command's config is checked before anything imports torch (the device option checks only its spelling;
    the runner resolves `auto` and checks availability), so a bad option answers at once."""
    monkeypatch.chdir(tmp_path)
    seen = _imports_after(argv)
    assert seen["status"] == 2
    assert seen["heavy"] == [], f"{argv} imported {seen['heavy']}"
    assert not any(tmp_path.iterdir())  # nothing written


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
