from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation import (
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
    for name, (low, high) in bootstrap_intervals(y, p, rounds=100).items():
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
