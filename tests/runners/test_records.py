"""results.json's tables: full precision, and the λ of every row (not one per SAE)."""

import json
import math

import pandas as pd

from saelens_amort.runners.eval import lambdas_by_sae
from saelens_amort.runners.records import json_records


def test_records_keep_every_digit():
    df = pd.DataFrame({"seconds_per_token": [8.395357910195855e-06], "nmse": [0.012345678901234], "x": [math.nan]})
    (row,) = json_records(df)
    assert row["seconds_per_token"] == 8.395357910195855e-06 and row["nmse"] == 0.012345678901234
    assert row["x"] is None


def test_lambda_of_every_row_by_sae_and_mode():
    df = pd.DataFrame({"sae": ["a", "a", "a", "b"], "mode": ["amortized", "semi", "unamortized", "semi"],
                       "lam": [None, 7.4, 4.6, 3.3]})
    assert lambdas_by_sae(df) == {"a": {"semi": 7.4, "unamortized": 4.6}, "b": {"semi": 3.3}}


def test_records_are_what_to_json_gives_but_for_the_digits():
    df = pd.DataFrame({"i": [1, 2], "b": [True, False], "s": ["x", None], "f": [1.5, math.inf],
                       "l": [[1.0, 2.0], [3.0]]})
    assert json_records(df) == [{"i": 1, "b": True, "s": "x", "f": 1.5, "l": [1.0, 2.0]},
                                {"i": 2, "b": False, "s": None, "f": None, "l": [3.0]}]
    assert json_records(df) == json.loads(df.to_json(orient="records"))
