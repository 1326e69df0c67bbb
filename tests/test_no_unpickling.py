"""No code path unpickles user data: the package never calls pickle, every torch.load is weights_only, and the torch
pin is one where dependencies' torch.load defaults to weights_only too."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "saelens_amort"
PYPROJECT = ROOT / "pyproject.toml"


def test_package_never_unpickles():
    for file in PACKAGE.rglob("*.py"):
        text = file.read_text()
        assert not re.search(r"\b(c?pickle|dill|joblib)\b", text), f"{file} uses pickle"
        for call in re.findall(r"torch\.load\((.*?)\)", text, flags=re.S):
            assert "weights_only=True" in call, f"{file}: torch.load({call}) may unpickle"


def test_torch_pin_defaults_torch_load_to_weights_only():
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    minimum = re.search(r">=\s*(\d+)\.(\d+)", torch)
    assert minimum and (int(minimum[1]), int(minimum[2])) >= (2, 6), torch
