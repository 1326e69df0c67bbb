"""Bad input found by an audit of every command (2026-12-04): folders of another command are never written into or
deleted, and non-finite or empty values are one error line (exit 2), with nothing written."""

import json

import pytest
from helpers import assert_cli_user_error

from saelens_amort.errors import SaeAmortError


@pytest.fixture
def owned(tmp_path):
    """A folder holding another command's results."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"command": "eval", "config": {}}))
    (out / "results.csv").write_text("sae,mode\ntoy/topk,amortized\n")
    return out


def _intact(out):
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "run.json"]
    assert (out / "results.csv").read_text() == "sae,mode\ntoy/topk,amortized\n"


def test_train_and_cross_domain_refuse_another_commands_folder(capsys, owned):
    assert_cli_user_error(capsys, r"holds files not written by `saeamort train`", "train", "--out", str(owned),
                          "--tokens", "2048", "--batch-size", "512")
    _intact(owned)
    assert_cli_user_error(capsys, r"holds results of `saeamort eval`", "cross-domain", "--out", str(owned),
                          "--tokens", "2048", "--batch-size", "512")
    _intact(owned)


def test_world_train_refuses_another_commands_folder(owned):
    from saelens_amort.world.saes import train_world_saes

    with pytest.raises(SaeAmortError, match=r"not written by `saeamort world train` \(results\.csv, run\.json\)"):
        train_world_saes(None, owned)
    _intact(owned)


def test_toy_build_refuses_a_folder_that_is_not_a_build_and_paths_through_files(capsys, owned, tmp_path):
    assert_cli_user_error(capsys, r"holds files that are not a toy world build", "toy", "build", "--scale", "tiny",
                          "--out", str(owned))
    _intact(owned)
    (tmp_path / "f").write_text("x")
    assert_cli_user_error(capsys, r"is a file, not a folder", "toy", "build", "--scale", "tiny", "--out",
                          str(tmp_path / "f"))
    assert_cli_user_error(capsys, r"is a file, not a folder", "toy", "build", "--scale", "tiny", "--out",
                          str(tmp_path / "f" / "w"))
    assert (tmp_path / "f").read_text() == "x" and not list(tmp_path.glob(".f*"))
    assert_cli_user_error(capsys, r"seed", "toy", "build", "--scale", "tiny", "--seed", "-1", "--out",
                          str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("lr", ["nan", "-1", "inf", "0"])
def test_train_learning_rate_must_be_positive_and_finite(capsys, tmp_path, lr):
    out = tmp_path / "t"
    assert_cli_user_error(capsys, r"--lr must be a positive finite number", "train", "--out", str(out), "--tokens",
                          "2048", "--batch-size", "512", "--lr", lr)
    assert not out.exists()


@pytest.mark.parametrize(("args", "pattern"), [
    (["gis", "--latents", "1", "--kl", "inf"], r"--kl needs positive finite targets"),
    (["alpha-sweep", "--features", "F", "--alphas", "nan"], r"--alphas must be finite numbers"),
    (["alpha-sweep", "--features", "F", "--alphas", "1,inf"], r"--alphas must be finite numbers"),
    (["patch", "--prompt", "", "--ablate", "1"], r"--prompt must not be empty"),
    (["patch", "--prompt", "hi", "--amplify", "1:nan"], r"--amplify values must be finite"),
    (["patch", "--prompt", "hi", "--set", "1:inf"], r"--set values must be finite"),
    (["eval", "--sae", "toy/topk", "--metrics", "truth"], r"--metrics truth needs a ground-truth world"),
])
def test_non_finite_and_empty_values_are_one_error(capsys, tmp_path, args, pattern):
    (tmp_path / "f.csv").write_text("layer,feature\n2,3\n")
    args = [str(tmp_path / "f.csv") if a == "F" else a for a in args]
    out = tmp_path / "out"
    assert_cli_user_error(capsys, pattern, *args, "--out", str(out))
    assert not out.exists()


@pytest.mark.parametrize(("args", "pattern"), [
    (["frontier", "--sae", "toy/topk", "--n-lambdas", "100000000"], r"--n-lambdas must be in \[1, 1000\]"),
    (["world", "build", "--tokens", "1024", "--seed", "-1"], r"seed"),
    (["world", "build", "--tokens", "1024", "--seed", "99999999999999999999999"], r"seed"),
    (["tpp", "--tokens", "512"], r"--tokens 512 is below the 1024 rows λ is calibrated on"),
    (["select-latents", "--class-id", "1", "--tokens", "512"], r"--tokens 512 is below the 1024 rows"),
])
def test_sizes_and_seeds_out_of_range_are_one_error(capsys, tmp_path, args, pattern):
    out = tmp_path / "out"
    assert_cli_user_error(capsys, pattern, *args, "--out", str(out))
    assert not out.exists()


def test_world_train_tokens_must_be_positive(tmp_path):
    from saelens_amort.world.saes import train_world_saes

    with pytest.raises(SaeAmortError, match="--tokens must be positive, got 0"):
        train_world_saes(None, tmp_path / "suite", tokens=0)
