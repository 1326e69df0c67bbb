import pytest
"""`saeamort patch` end to end: side-by-side table, outputs, and bad inputs as one stderr line."""

import pandas as pd
from helpers import assert_user_error, saeamort


def test_patch_writes_side_by_side(tmp_path):
    out = tmp_path / "p"
    proc = saeamort("patch", "--model", "toy", "--prompt", "the match ended", "--set", "100:40", "--set", "200:40",
                    "--max-new-tokens", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "patch.csv")
    assert list(df.columns) == ["prompt", "original", "patched"] and len(df) == 1
    assert df["original"][0] != df["patched"][0]
    assert "Original vs patched" in (out / "report.html").read_text()
    # the folder is this run's now: another edit (or another command's folder) is refused before any work
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_user_error(saeamort("patch", "--model", "toy", "--prompt", "the match ended", "--set", "100:41",
                               "--max-new-tokens", "8", "--out", str(out)), "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.html").write_text("another command's report")
    assert_user_error(saeamort("patch", "--model", "toy", "--prompt", "x", "--ablate", "3", "--out", str(other)),
                      "--overwrite")
    assert (other / "report.html").read_text() == "another command's report"


@pytest.mark.slow
def test_patch_bad_inputs(tmp_path):
    assert_user_error(saeamort("patch", "--model", "toy", "--prompt", "x", "--ablate", "5000"), "out of range")
    assert_user_error(saeamort("patch", "--model", "toy", "--prompt", "x"), "at least one latent")
    assert_user_error(saeamort("patch", "--model", "toy", "--prompt", "x", "--amplify", "3"), "LATENT:VALUE")
