from __future__ import annotations

import numpy as np
import pytest

from tasks.shared.metrics import (
    bootstrap_intervals,
    calibration,
    cost_threshold,
    ks_statistic,
    metrics,
    paired_auc_difference,
)


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.2).astype(int)
    p = np.clip(0.2 + 0.25 * (y - 0.2) + rng.normal(0, 0.15, 4000), 0.001, 0.999)
    return y, p


def test_ks_is_one_for_perfect_separation_and_zero_for_none() -> None:
    y = np.array([0, 0, 1, 1])
    assert ks_statistic(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert ks_statistic(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) <= 0.5


def test_intervals_contain_the_point_estimate(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    point = metrics(y, p)
    intervals = bootstrap_intervals(y, p, rounds=100)
    assert set(intervals) == set(point)  # every metric the report shows has its interval
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high, name


def test_cost_threshold_moves_with_the_costs(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    cautious = cost_threshold(y, p, cost_fn=10, cost_fp=1)
    lenient = cost_threshold(y, p, cost_fn=1, cost_fp=10)
    assert cautious.threshold < lenient.threshold
    c = cautious.confusion
    assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == len(y)
    assert cautious.expected_cost == pytest.approx((10 * c["fn"] + c["fp"]) / len(y))


def test_calibration_bins_cover_every_row(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    bins = calibration(y, p)
    assert sum(b["rows"] for b in bins) == len(y)
    assert bins[0]["predicted"] < bins[-1]["predicted"]


def test_paired_difference_of_a_model_with_itself_is_zero(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    same = paired_auc_difference(y, p, p, rounds=50)
    assert same == {"difference": 0.0, "lower": 0.0, "upper": 0.0}
    worse = paired_auc_difference(y, p, np.random.default_rng(1).random(len(y)), rounds=50)
    assert worse["lower"] > 0


def test_weighted_metrics_equal_scikit_learn_on_the_resampled_rows() -> None:
    """A bootstrap round (drawn positions or counts) gives exactly the metrics of the resampled rows, ties included."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from tasks.shared.metrics import _Ranked, _resamples

    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.2).astype(int)
    p = np.round(np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.15, 3000), 0, 1), 2)  # many ties
    ranked = _Ranked(y, p)
    draws = np.random.default_rng(11)
    for rows in list(_resamples(len(y), 5, seed=11)):
        idx = draws.integers(0, len(y), len(y))
        assert np.array_equal(rows, idx)
        for got in (ranked.drawn(rows), ranked.weighted(np.bincount(rows, minlength=len(y)).astype(float))):
            assert got is not None
            assert got["roc_auc"] == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)
            assert got["pr_auc"] == pytest.approx(average_precision_score(y[idx], p[idx]), abs=1e-12)
            assert got["brier"] == pytest.approx(np.mean((p[idx] - y[idx]) ** 2), abs=1e-12)
            assert got["ks"] == pytest.approx(ks_statistic(y[idx], p[idx]), abs=1e-12)
            assert got["log_loss"] == pytest.approx(metrics(y[idx], p[idx])["log_loss"], abs=1e-12)
    assert ranked.weighted(np.where(y == 1, 0.0, 1.0)) is None  # no positive drawn: no metric
    assert ranked.drawn(np.flatnonzero(y == 0)) is None


def test_missing_values_are_no_group_whatever_stands_for_them() -> None:
    from tasks.shared.metrics import pd_unique

    values = np.array(["b", None, float("nan"), "a", "b"], dtype=object)
    assert pd_unique(values) == ["b", "a"]
    import pandas as pd

    strings = pd.Series(["b", pd.NA, "a"], dtype="string").to_numpy(dtype=object)
    assert pd_unique(strings) == ["b", "a"]
