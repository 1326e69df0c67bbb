"""Importing the package is cheap (the CLI starts from it); the heavy public names load on first use, and
`saelens_amort.saes` registers the SAE-Lens architecture "loca"."""

import subprocess
import sys

CODE = """
import sys
import saelens_amort
assert not {"torch", "sae_lens", "transformer_lens"} & set(sys.modules), "import saelens_amort loaded a heavy module"
import saelens_amort.saes
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
assert "loca" in SAE_CLASS_REGISTRY and "loca" in SAE_TRAINING_CLASS_REGISTRY
from saelens_amort import load_model
print(load_model.__module__)
"""


def test_cheap_import_and_loca_registered_by_saes():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "saelens_amort.models"
