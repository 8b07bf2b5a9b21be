from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Aggregate, Ratio
from feature_repo.transforms import compute_aggregates, compute_ratios, ratio_frame


def test_ratios_never_divide_by_zero_or_missing() -> None:
    inputs = pd.DataFrame({"loan": [100.0, 50.0, 10.0, None], "income": [1000.0, 0.0, None, 5.0]})
    out = compute_ratios(inputs, [Ratio(name="dti", numerator="loan", denominator="income")])
    assert out["dti"].iloc[0] == pytest.approx(0.1)
    assert out["dti"].iloc[1:].isna().all()
    assert not np.isinf(out["dti"]).any()


def test_ratio_frame_matches_the_contract_form_and_ignores_duplicate_columns() -> None:
    inputs = pd.DataFrame([[2.0, 4.0, 2.0]], columns=["a", "b", "a"])
    out = ratio_frame(inputs, [("r", "a", "b")])
    assert out["r"].tolist() == [0.5]


def test_aggregates_look_back_over_each_entity_only() -> None:
    history = pd.DataFrame(
        {
            "customer_id": [1, 1, 1, 1, 2],
            "at": pd.to_datetime(["2025-01-31", "2025-02-28", "2025-03-31", "2025-04-30", "2025-01-31"], utc=True),
            "util": [0.1, 0.3, 0.5, 0.9, 7.0],
        }
    ).sample(frac=1, random_state=1)  # arrival order must not matter
    out = compute_aggregates(
        history,
        [
            Aggregate(name="m3", column="util", function="mean", window=3),
            Aggregate(name="x6", column="util", function="max", window=6),
        ],
        "customer_id",
        "at",
    )
    by_time = out.sort_values(["customer_id", "at"])
    assert by_time["m3"].round(6).tolist() == [0.1, 0.2, 0.3, round((0.3 + 0.5 + 0.9) / 3, 6), 7.0]
    assert by_time["x6"].tolist() == [0.1, 0.3, 0.5, 0.9, 7.0]
    assert list(out.index) == list(history.index)
