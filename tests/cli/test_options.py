"""Options shared by the commands: the same defaults everywhere (toy model, auto device, the model's own layer),
devices checked for every command, numeric bounds, and --out under a file refused — each as one line, exit 2."""

import pytest
import torch
import typer
from helpers import assert_cli_user_error, assert_user_error, saeamort

from saelens_amort.cli.app import app, register_commands
from saelens_amort.cli.options import resolve_layer
from saelens_amort.errors import SaeAmortError


def _commands() -> dict:
    register_commands()
    root = typer.main.get_command(app)
    found = {}
    for name, cmd in root.commands.items():
        for sub_name, sub in getattr(cmd, "commands", {name: cmd}).items():
            found[sub_name] = {p.name: p for p in sub.params}
    return found


def test_shared_defaults_agree_across_commands():
    commands = _commands()
    with_model = {name: params for name, params in commands.items() if "model" in params}
    assert {"eval", "sweep-semi", "dynamics", "patch", "tpp", "select-latents", "gis", "interpret", "collect",
            "alpha-sweep", "cross-domain"} <= set(with_model)
    from_file = {"train", "alpha-sweep"}  # None = the recipe's / sweep YAML's value, else the config's default
    for name, params in with_model.items():
        if name not in from_file:
            assert params["model"].default == "toy", name
        if "layer" in params and name not in from_file:
            assert params["layer"].default is None, name  # follows the model: resolve_layer
    for name, params in commands.items():
        if "device" in params and name not in from_file:
            assert params["device"].default == "auto", name
    from saelens_amort.runners.alpha_sweep_config import SweepConfig

    assert SweepConfig.model == "toy" and commands["alpha-sweep"]["device"].default is None


def test_layer_follows_the_model():
    assert resolve_layer("toy", None, None) == 2
    assert resolve_layer("pythia-160m-deduped", None, None) == 8
    assert resolve_layer("/models/EleutherAI/pythia-160m-deduped", None, None) == 8
    assert resolve_layer("toy", 1, None) == 1
    assert resolve_layer("gpt2", None, "blocks.3.hook_mlp_out") is None
    with pytest.raises(SaeAmortError, match="--model gpt2: give --layer"):
        resolve_layer("gpt2", None, None)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["collect", "--device", "tpu"], "unknown --device 'tpu'"),
        (["tpp", "--device", "mps"], "MPS .* not available" if not torch.backends.mps.is_available() else None),
        (["patch", "--prompt", "x", "--ablate", "1", "--device", "cuda:0"],
         "CUDA is not available" if not torch.cuda.is_available() else None),
    ],
)
def test_device_checked_for_every_command(args, pattern):
    if pattern is None:
        pytest.skip("that device is available here")
    assert_user_error(saeamort(*args), pattern)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["collect", "--tokens", "0"], "--tokens must be positive, got 0"),
        (["eval", "--tokens", str(10**23)], "--tokens must be at most 10,000,000,000"),
        (["eval", "--batch-size", "-3"], "--batch-size must be positive"),
        (["eval", "--splice-sequences", "-1"], "--splice-sequences must be at least 0"),
        (["tpp", "--layer", "-1"], "--layer must be at least 0"),
        (["patch", "--prompt", "x", "--ablate", "1", "--max-new-tokens", "0"], "--max-new-tokens must be positive"),
        (["train", "--steps", "0", "--out", "o"], "--steps must be positive"),
        (["gis", "--seed", "-1"], "--seed must be at least 0"),
    ],
)
def test_numbers_are_bounded(args, pattern):
    assert_user_error(saeamort(*args), pattern)


@pytest.mark.parametrize(
    "args",
    [["eval"], ["tpp"], ["gis", "--latents", "1"], ["interpret"], ["collect"], ["dynamics", "--checkpoints", "c"],
     ["train"], ["alpha-sweep", "--features", "f.csv"], ["patch", "--prompt", "x", "--ablate", "1"], ["cross-domain"]],
    ids=lambda a: a[0],
)
def test_out_under_a_file(tmp_path, args):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = saeamort(*args, "--out", str(blocker / "sub"))
    assert_user_error(proc, f"--out {blocker / 'sub'} is under {blocker}, which is a file")
    assert blocker.read_text() == "x"


def test_out_file_of_select_latents(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(saeamort("select-latents", "--class-id", "0", "--out", str(blocker / "l.json")), "is a file")
    assert_user_error(saeamort("select-latents", "--class-id", "0", "--out", str(tmp_path)), "is a folder")


LIST_OPTIONS = [  # (command and its required options, the list option)
    (["eval"], "--modes"), (["eval"], "--metrics"), (["sweep-semi"], "--steps"),
    (["frontier"], "--modes"), (["frontier"], "--metrics"), (["frontier"], "--lambdas"), (["frontier"], "--ks"),
    (["frontier"], "--k-multipliers"), (["frontier"], "--threshold-scales"),
    (["dynamics", "--checkpoints", "c"], "--modes"), (["tpp"], "--modes"), (["tpp"], "--top-m"),
    (["gis"], "--kl"), (["gis"], "--latents"), (["interpret"], "--latents"),
    (["alpha-sweep", "--features", "f.csv"], "--alphas"), (["train", "--arch", "loca"], "--budgets"),
    (["world", "train", "--world", "w"], "--widths"), (["world", "train", "--world", "w"], "--families"),
]


@pytest.mark.parametrize(("args", "option"), LIST_OPTIONS, ids=lambda a: a if isinstance(a, str) else a[0])
@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_list_is_refused_not_read_as_the_default(tmp_path, capsys, args, option, value):
    """`--ks ""` names no value: one error line, exit 2, nothing written — before, eval ran its default modes and
    frontier its default grid, and `frontier --modes ""` swept every SAE and then failed with a KeyError."""
    out = tmp_path / "out"
    assert_cli_user_error(capsys, f"{option} is empty: give at least one value", *args, option, value, "--out",
                          str(out))
    assert not out.exists()


@pytest.mark.parametrize(("args", "option"), [
    (["sweep-semi"], "--steps"), (["frontier"], "--ks"), (["tpp"], "--top-m"), (["gis"], "--latents"),
    (["interpret"], "--latents"), (["train", "--arch", "loca"], "--budgets"),
    (["world", "train", "--world", "w"], "--widths"),
])
def test_a_list_of_integers_refuses_other_words(tmp_path, capsys, args, option):
    assert_cli_user_error(capsys, f"{option} must be comma-separated integers, got '2,x'", *args, option, "2,x",
                          "--out", str(tmp_path / "out"))


def test_gis_without_latents_is_refused_before_loading(capsys):
    assert_cli_user_error(capsys, "no latents to intervene on: give --latents", "gis")
