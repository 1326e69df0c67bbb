"""`saeamort collect` end to end in a subprocess: the main job on the toy world, and every bad input the issue
names gets one clear stderr line, a non-zero exit, no traceback and no partial output."""

from pathlib import Path

import pytest

from helpers import assert_user_error, saeamort

from saelens_amort.activations import ActivationStore


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "acts"
    proc = saeamort("collect", "--model", "toy", "--layer", "2", "--tokens", "3000", "--shard-tokens", "1000",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "3000 activations of blocks.2.hook_resid_post" in proc.stdout
    return out


def test_main_job_collects_a_readable_store(collected):
    store = ActivationStore.open(collected)
    assert store.n_tokens == 3000 and store.d_in == 128 and len(store.shard_files) == 3
    batch = store.load()
    assert (batch.positions >= 1).all()  # BOS rows are dropped
    assert set(batch.labels.tolist()) <= set(range(5))


def test_same_request_reads_the_cache(collected):
    before = {p.name: p.stat().st_mtime_ns for p in collected.iterdir()}
    proc = saeamort("collect", "--model", "toy", "--layer", "2", "--tokens", "3000", "--shard-tokens", "1000",
                    "--out", str(collected))
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in collected.iterdir()} == before


def test_different_request_into_the_same_out_is_refused(collected):
    proc = saeamort("collect", "--model", "toy", "--layer", "1", "--tokens", "3000", "--out", str(collected))
    assert_user_error(proc, "different")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--model", "no-such-model", "--layer", "0"], "unknown model 'no-such-model'"),
        (["--model", "no-such-model"], "--model no-such-model: give --layer"),
        (["--model", "toy", "--hook", "blocks.1.hook_nope"], "hook"),
        (["--model", "toy", "--layer", "7"], r"layer 7 is out of range: the model has layers 0\.\.3"),
        (["--model", "toy", "--layer", "2", "--tokens", "0"], "--tokens must be positive"),
        (["--model", "toy", "--layer", "2", "--tokens", "-5"], "--tokens must be positive"),
        (["--model", "toy", "--layer", "2", "--source", "missing.jsonl"], "missing.jsonl"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, pattern):
    out = tmp_path / "out"
    proc = saeamort("collect", *args, "--out", str(out))
    assert_user_error(proc, pattern)
    assert not out.exists(), "no partial output on bad input"


def test_offline_and_uncached_model(tmp_path):
    proc = saeamort("collect", "--model", "pythia-160m-deduped", "--layer", "8", "--out", str(tmp_path / "o"),
                    env={"HF_HOME": str(tmp_path / "hf")})
    assert_user_error(proc, "cannot be downloaded.*--model toy")


def test_empty_source(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    proc = saeamort("collect", "--model", "toy", "--layer", "2", "--source", str(empty), "--out", str(tmp_path / "o"))
    assert_user_error(proc, "no text")
    assert not (tmp_path / "o").exists()


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = saeamort("collect", "--model", "toy", "--layer", "2", "--out", str(blocker / "sub"))
    assert_user_error(proc, "--out")


def test_truncated_shard_in_the_cache_is_reported(collected, tmp_path):
    import shutil

    copy = tmp_path / "acts"
    shutil.copytree(collected, copy)
    shard = sorted(copy.glob("shard_*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    proc = saeamort("collect", "--model", "toy", "--layer", "2", "--tokens", "3000", "--shard-tokens", "1000",
                    "--out", str(copy))
    assert_user_error(proc, "corrupt")
