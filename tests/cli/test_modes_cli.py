"""`saeamort modes` lists every registered mode."""

import subprocess
import sys


def test_modes_lists_builtins():
    proc = subprocess.run([sys.executable, "-m", "saelens_amort", "modes"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for mode in ("amortized", "semi", "unamortized", "omp", "mp"):
        assert mode in proc.stdout
