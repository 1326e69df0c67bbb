"""An interrupted eval leaves no results file, keeps the finished SAEs, and a rerun of the same config evaluates only
the rest and writes the same results as an uninterrupted run."""

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from saelens_amort.runners import eval as ev
from saelens_amort.run_folder import RECORD_FILE, run_record
from saelens_amort.runners.eval import EvalConfig, run_eval

CFG = EvalConfig(model="toy", layer=2, saes=("toy/topk", "toy/jumprelu"), modes=("amortized", "unamortized"),
                 tokens=1024, calib_tokens=512, batch_size=512, splice_sequences=2)


@pytest.mark.slow
def test_resume_after_interruption(tmp_path, monkeypatch):
    real = ev.evaluate_sae
    calls = []

    def flaky(spec, *args, **kwargs):
        calls.append(spec)
        if spec == "toy/jumprelu" and len(calls) == 2:
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(ev, "evaluate_sae", flaky)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_eval(CFG, out, progress=False)
    assert not (out / "results.csv").exists() and not (out / "results.json").exists()
    assert (out / ev.PARTIAL_DIR / "0.json").exists() and not list((out / ev.PARTIAL_DIR).glob("*.pkl"))
    resumed = run_eval(CFG, out, progress=False)
    assert calls == ["toy/topk", "toy/jumprelu", "toy/jumprelu"]  # topk was not evaluated again
    assert not (out / ev.PARTIAL_DIR).exists()
    monkeypatch.setattr(ev, "evaluate_sae", real)
    fresh = run_eval(CFG, tmp_path / "fresh", progress=False)
    timing = [c for c in fresh.columns if "second" in c]
    pd.testing.assert_frame_equal(resumed.drop(columns=timing), fresh.drop(columns=timing), rtol=1e-6, atol=1e-9)


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: the stand-in for a shell command in a forged run folder."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_forged_pickle_in_run_folder_is_never_unpickled(tmp_path):
    cfg = EvalConfig(model="toy", layer=2, saes=("toy/topk",), modes=("amortized",), metrics=("reconstruction",),
                     tokens=256, calib_tokens=128, batch_size=256, splice_sequences=0)
    out, marker = tmp_path / "run", tmp_path / "pwned"
    part = out / ev.PARTIAL_DIR
    part.mkdir(parents=True)
    (part / "config.json").write_text(json.dumps(cfg.as_json()))  # what the old resume check trusted
    (out / RECORD_FILE).write_text(json.dumps(run_record("eval", cfg.as_json())))
    (part / "0.pkl").write_bytes(pickle.dumps(([{"sae": "forged"}], {"freqs": {}, "gap": _Payload(marker)})))
    df = run_eval(cfg, out, progress=False)
    assert not marker.exists()
    assert list(df["sae"]) == ["toy/topk"] and df["nmse"].iloc[0] < 0.1  # evaluated, not taken from the forgery
