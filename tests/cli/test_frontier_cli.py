"""`saeamort frontier` bad inputs: one clear stderr line, exit 2, nothing written (in-process: no run starts)."""

import re

import pytest

from saelens_amort.cli import main

BASE = ("frontier", "--model", "toy", "--sae", "toy/topk", "--tokens", "512", "--calib-tokens", "256")


@pytest.mark.parametrize("args, pattern", [
    (("--k-multipliers", ""), "--k-multipliers is empty"),
    (("--threshold-scales", ""), "--threshold-scales is empty"),
    (("--ks", "0,4"), "--ks must be positive"),
    (("--ks", "8,2048"), r"--ks \[2048\] exceed the SAE's d_sae=1024"),
    (("--lambdas", "0.1,x"), "--lambdas must be comma-separated numbers"),
    (("--ks", ""), "--ks is empty"),
    (("--modes", ""), "--modes is empty"),
    (("--modes", "amortized,bogus"), "unknown mode"),
    (("--k-multipliers", "1,inf"), "--k-multipliers must be positive finite numbers"),
    (("--lambda-ratio", "inf"), "--lambda-ratio a finite number > 1"),
    (("--lambdas", "inf"), "--lambdas must be positive finite numbers"),
    (("--protocol", "bogus"), "unknown --protocol 'bogus'"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, pattern):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([*BASE, *args, "--out", str(out)])
    assert exit_info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("saeamort: error: ") and "Traceback" not in err[0]
    assert re.search(pattern, err[0]), err[0]
    assert not out.exists()
