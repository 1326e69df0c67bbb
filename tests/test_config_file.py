"""YAML configs are read against their dataclass's field types: wrong types or shapes are one user error naming the
key (through the real `train` CLI: exit 2, one stderr line, nothing written); right ones load with tuples and floats."""

import pytest
from helpers import assert_cli_user_error

from saelens_amort import SaeAmortError
from saelens_amort.training.config import TrainConfig

BAD_RECIPES = {
    "a_list": ("- arch: topk\n- k: 4\n", r"must be a mapping of option names to values .* got a YAML list"),
    "a_scalar": ("topk\n", r"must be a mapping .* got a YAML str"),
    "not_yaml": ("arch: [topk\n", r"cannot read --config"),
    "tokens_a_word": ("tokens: lots\n", r"tokens must be an integer, got 'lots'"),
    "tokens_a_bool": ("tokens: true\n", r"tokens must be an integer, got True"),
    "k_a_float": ("k: 2.5\n", r"k must be an integer, got 2\.5"),
    "budgets_a_number": ("arch: loca\nbudgets: 5\n", r"budgets must be a list of integers, got 5"),
    "budgets_words": ("arch: loca\nbudgets: [a, b]\n", r"budgets must be a list of integers, got \['a', 'b'\]"),
    "layer_a_list": ("layer: [1]\n", r"layer must be an integer or null, got \[1\]"),
    "lr_a_word": ("lr: fast\n", r"lr must be a number, got 'fast'"),
    "wandb_a_word": ("wandb: 'no'\n", r"wandb must be true or false, got 'no'"),
    "arch_a_number": ("arch: 3\n", r"arch must be a string, got 3"),
    "unknown_key": ("learning_rate: 3\n", r"unknown keys \['learning_rate'\]"),
}


@pytest.mark.parametrize("case", list(BAD_RECIPES))
def test_bad_recipe_is_one_clear_error(case, tmp_path, capsys):
    text, pattern = BAD_RECIPES[case]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(SaeAmortError, match=pattern):
        TrainConfig.from_yaml(recipe)
    out = tmp_path / "run"
    assert_cli_user_error(capsys, pattern, "train", "--config", str(recipe), "--out", str(out))
    assert not out.exists()


def test_good_recipe_types(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("arch: loca\nbudgets: [3, 2, 1]\nlr: 3e-4\nl1_coefficient: 1\nlayer: null\n"
                      "hook: blocks.2.hook_resid_post\nsteps: 4\nbatch_size: 256\n")
    cfg = TrainConfig.from_yaml(recipe, tokens=1024)
    assert cfg.budgets == (3, 2, 1) and cfg.layer is None and cfg.tokens == 1024
    assert isinstance(cfg.lr, float) and cfg.lr == pytest.approx(3e-4)  # PyYAML reads 3e-4 as a string
    assert isinstance(cfg.l1_coefficient, float) and cfg.l1_coefficient == 1.0
    (tmp_path / "empty.yaml").write_text("")
    assert TrainConfig.from_yaml(tmp_path / "empty.yaml") == TrainConfig()
