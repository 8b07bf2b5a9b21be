from __future__ import annotations

import io
import math
import threading
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from tasks.train.plots import (
    calibration_png,
    fairness_png,
    pr_curve_png,
    roc_curve_png,
    shap_importance_png,
    threshold_cost_png,
)

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scored(seed: int, n: int = 2000, signal: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    p = np.clip(0.2 + signal * (y - 0.2) + rng.normal(0, 0.15, n), 0.001, 0.999)
    return y, p


def assert_png(png: bytes, height: int = 450, width: int = 600) -> None:
    assert isinstance(png, bytes)
    assert png.startswith(SIGNATURE)
    image = imread(io.BytesIO(png))
    assert image.shape[0] == height
    assert image.shape[1] == width


FAIRNESS: dict[str, dict[str, dict[str, Any]]] = {
    "sex": {
        "female": {"selection_rate": 0.71, "tpr": 0.62, "fpr": 0.18, "auc": 0.78, "count": 1200},
        "male": {"selection_rate": 0.68, "tpr": 0.65, "fpr": 0.21, "auc": 0.77, "count": 1100},
    },
    "age_band": {
        "18-25": {"selection_rate": 0.55, "tpr": 0.58, "fpr": None, "count": 40},
        "25-60": {"selection_rate": 0.72, "tpr": 0.66, "fpr": 0.19, "auc": 0.79, "count": 1900},
        "60+": {"selection_rate": 0.70, "tpr": float("nan"), "fpr": 0.2, "count": 360},
    },
}


# --- output -------------------------------------------------------------------------------------------------------


def test_roc_curve_png() -> None:
    y, p = scored(0)
    _, champion = scored(0, signal=0.1)
    png = roc_curve_png(y, p)
    assert_png(png)
    assert_png(roc_curve_png(y, p, label="candidate", champion_scores=champion))
    y2, p2 = scored(1)
    assert roc_curve_png(y2, p2) != png
    assert roc_curve_png(y, p, champion_scores=champion) != png


def test_pr_curve_png() -> None:
    y, p = scored(0)
    _, champion = scored(0, signal=0.1)
    png = pr_curve_png(y, p)
    assert_png(png)
    assert_png(pr_curve_png(y, p, champion_scores=champion))
    y2, p2 = scored(1)
    assert pr_curve_png(y2, p2) != png
    assert pr_curve_png(y, p, champion_scores=champion) != png


def test_calibration_png() -> None:
    y, p = scored(0)
    png = calibration_png(y, p)
    assert_png(png)
    y2, p2 = scored(1)
    assert calibration_png(y2, p2) != png
    assert calibration_png(y, p, bins=5) != png


def test_fairness_png_one_row_per_attribute() -> None:
    png = fairness_png(FAIRNESS)
    assert_png(png, height=550)  # two attributes: 0.5 + 2.5 * 2 inches
    one = fairness_png({"sex": FAIRNESS["sex"]})
    assert_png(one)
    assert fairness_png({"sex": FAIRNESS["sex"]}, min_group_rows=1150) != one  # "male" now small, hatched
    assert fairness_png(FAIRNESS, min_group_rows=100) != png


def test_fairness_png_accepts_groups_without_metrics() -> None:
    assert_png(fairness_png({"region": {"north": {"count": 10}, "south": {"selection_rate": None}}}))


def test_shap_importance_png() -> None:
    rng = np.random.default_rng(0)
    importance = {f"feature_{i}": float(v) for i, v in enumerate(rng.random(30))}
    png = shap_importance_png(importance)
    assert_png(png)
    assert shap_importance_png(importance, top=5) != png
    assert_png(shap_importance_png({"only $ feature": 0.3}))  # a dollar sign is not read as mathtext


def test_threshold_cost_png() -> None:
    thresholds = np.linspace(0, 1, 101)
    costs = 0.5 + (thresholds - 0.3) ** 2
    png = threshold_cost_png(thresholds, costs, chosen=0.3)
    assert_png(png)
    assert threshold_cost_png(thresholds, costs, chosen=0.6) != png
    assert threshold_cost_png(thresholds[::-1], costs[::-1], chosen=0.3) == png  # drawn in threshold order


def test_same_input_gives_same_bytes_across_threads() -> None:
    y, p = scored(0)
    expected = roc_curve_png(y, p)
    results: list[bytes] = []

    def render() -> None:
        results.append(roc_curve_png(y, p))

    threads = [threading.Thread(target=render) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4


def test_no_pyplot_figures_are_left_open() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    y, p = scored(0)
    roc_curve_png(y, p)
    fairness_png(FAIRNESS)
    assert plt.get_fignums() == before


# --- ValueError cases ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plot", [roc_curve_png, pr_curve_png, calibration_png])
def test_lengths_differ(plot: Any) -> None:
    y, p = scored(0)
    with pytest.raises(ValueError, match="lengths differ"):
        plot(y, p[:-1])


@pytest.mark.parametrize("plot", [roc_curve_png, pr_curve_png])
def test_champion_lengths_differ(plot: Any) -> None:
    y, p = scored(0)
    with pytest.raises(ValueError, match="lengths differ.*champion_scores"):
        plot(y, p, champion_scores=p[:-1])


@pytest.mark.parametrize("plot", [roc_curve_png, pr_curve_png])
def test_single_class(plot: Any) -> None:
    with pytest.raises(ValueError, match="single class"):
        plot(np.zeros(10), np.linspace(0, 1, 10))


@pytest.mark.parametrize("plot", [roc_curve_png, pr_curve_png, calibration_png])
def test_labels_not_binary(plot: Any) -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        plot(np.array([0, 1, 2]), np.array([0.1, 0.5, 0.9]))


@pytest.mark.parametrize("plot", [roc_curve_png, pr_curve_png, calibration_png])
def test_empty_input(plot: Any) -> None:
    with pytest.raises(ValueError, match="y_true is empty"):
        plot(np.array([]), np.array([]))


@pytest.mark.parametrize("plot", [roc_curve_png, pr_curve_png, calibration_png])
def test_nan_scores(plot: Any) -> None:
    y, p = scored(0)
    p[3] = np.nan
    with pytest.raises(ValueError, match="scores contains NaN"):
        plot(y, p)


def test_two_dimensional_scores() -> None:
    y, p = scored(0)
    with pytest.raises(ValueError, match="one-dimensional"):
        roc_curve_png(y, np.column_stack([1 - p, p]))


def test_calibration_scores_outside_unit_interval() -> None:
    y, p = scored(0)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        calibration_png(y, p * 2)


@pytest.mark.parametrize("bins", [1, 0, 2.5, True])
def test_calibration_bad_bins(bins: Any) -> None:
    y, p = scored(0)
    with pytest.raises(ValueError, match="bins must be an integer"):
        calibration_png(y, p, bins=bins)


def test_fairness_empty() -> None:
    with pytest.raises(ValueError, match="by_group is empty"):
        fairness_png({})


def test_fairness_attribute_without_groups() -> None:
    with pytest.raises(ValueError, match="attribute 'sex' has no groups"):
        fairness_png({"sex": {}})


def test_fairness_unknown_metric() -> None:
    with pytest.raises(ValueError, match="unknown metric keys.*approval_rate"):
        fairness_png({"sex": {"female": {"approval_rate": 0.7}}})


def test_fairness_rate_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"sex/female: tpr must lie in \[0, 1\]"):
        fairness_png({"sex": {"female": {"tpr": 1.5}}})


def test_fairness_metric_not_a_number() -> None:
    with pytest.raises(ValueError, match="fpr must be a number or None"):
        fairness_png({"sex": {"female": {"fpr": "high"}}})  # type: ignore[dict-item]


def test_fairness_negative_count() -> None:
    with pytest.raises(ValueError, match="count must be a non-negative number"):
        fairness_png({"sex": {"female": {"count": -1}}})


def test_fairness_negative_min_group_rows() -> None:
    with pytest.raises(ValueError, match="min_group_rows must be a non-negative number"):
        fairness_png(FAIRNESS, min_group_rows=-5)


def test_shap_importance_empty() -> None:
    with pytest.raises(ValueError, match="importance is empty"):
        shap_importance_png({})


def test_shap_importance_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        shap_importance_png({"a": 0.2, "b": -0.1})


def test_shap_importance_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        shap_importance_png({"a": math.nan})


@pytest.mark.parametrize("top", [0, -1, 2.0])
def test_shap_importance_bad_top(top: Any) -> None:
    with pytest.raises(ValueError, match="top must be a positive integer"):
        shap_importance_png({"a": 0.2}, top=top)


def test_threshold_cost_lengths_differ() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        threshold_cost_png(np.linspace(0, 1, 10), np.ones(9), chosen=0.5)


def test_threshold_cost_empty() -> None:
    with pytest.raises(ValueError, match="thresholds is empty"):
        threshold_cost_png([], [], chosen=0.5)


def test_threshold_cost_bad_chosen() -> None:
    with pytest.raises(ValueError, match="chosen must be a finite number"):
        threshold_cost_png(np.linspace(0, 1, 10), np.ones(10), chosen=math.nan)
