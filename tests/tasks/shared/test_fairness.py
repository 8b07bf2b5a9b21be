from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from closedloop.contract import load_contract
from tasks.shared.fairness import FairnessLimits, assess, groups_of

REPO = Path(__file__).resolve().parents[3]
CONTRACT = load_contract(REPO / "datasets/credit_synthetic/contract.yaml")


def _population(n: int = 3000, biased: bool = False) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    sensitive = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "sex": rng.choice(["female", "male"], n),
            "marital_status": rng.choice(["married", "single", "other"], n, p=[0.5, 0.49, 0.01]),
        }
    )
    y = (rng.random(n) < 0.2).astype(int)
    p = np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.1, n), 0, 1)
    if biased:
        p = np.where(sensitive["sex"] == "female", np.minimum(p + 0.4, 1), p)
    return sensitive, y, p


def test_age_is_grouped_in_the_contract_bands() -> None:
    groups = groups_of(pd.Series([18, 24, 25, 64, 65, 100]), CONTRACT.column("age"))
    assert groups.tolist() == ["18-25", "18-25", "25-35", "50-65", "65-101", "65-101"]


def test_a_fair_model_passes_and_small_groups_are_flagged_not_judged() -> None:
    sensitive, y, p = _population()
    result = assess(CONTRACT, sensitive, y, p, threshold=0.35, limits=FairnessLimits())
    assert result["sex"]["verdict"] == "pass"
    assert "other" in result["marital_status"]["small_groups"]
    assert set(result["marital_status"]["groups"]) == {"married", "single"}


def test_a_biased_model_fails_with_the_measures_named() -> None:
    sensitive, y, p = _population(biased=True)
    result = assess(CONTRACT, sensitive, y, p, threshold=0.35, limits=FairnessLimits())
    assert result["sex"]["verdict"] == "fail"
    assert "disparate impact (four-fifths rule)" in result["sex"]["failures"]
    assert result["sex"]["groups"]["female"]["approval_rate"] < result["sex"]["groups"]["male"]["approval_rate"]


def test_an_attribute_with_one_group_is_skipped_with_a_reason() -> None:
    sensitive, y, p = _population()
    sensitive["sex"] = "female"
    result = assess(CONTRACT, sensitive, y, p, threshold=0.35, limits=FairnessLimits())
    assert result["sex"]["verdict"] == "skipped"
    assert "fewer than two groups" in result["sex"]["reason"]


def test_equalized_odds_is_judged_only_between_groups_with_enough_outcomes() -> None:
    rng = np.random.default_rng(9)
    n = 2000
    status = np.where(np.arange(n) < 100, "other", np.where(np.arange(n) % 2, "married", "single"))
    y = np.where(status == "other", (np.arange(n) % 10 == 0).astype(int), (rng.random(n) < 0.2).astype(int))
    p = np.clip(0.2 + 0.3 * (y - 0.2) + rng.normal(0, 0.1, n), 0, 1)
    p[(status == "other") & (y == 1)] = 0.0  # every one of the 10 defaulters of the small group is approved
    sensitive = pd.DataFrame({"marital_status": status, "sex": "female", "age": 40})
    result = assess(CONTRACT, sensitive, y, p, threshold=0.35, limits=FairnessLimits(min_group_outcomes=30))
    judged = result["marital_status"]
    assert judged["groups"]["other"]["tpr"] == 0.0  # reported ...
    assert set(judged["equalized_odds_groups"]) == {
        "married",
        "single",
    }
    assert "equalized odds difference" not in judged["failures"]  # ... but 10 defaults decide nothing
    strict = assess(CONTRACT, sensitive, y, p, threshold=0.35, limits=FairnessLimits(min_group_outcomes=5))
    assert "equalized odds difference" in strict["marital_status"]["failures"]


def test_worsening_vs_the_champion_needs_evidence_beyond_noise() -> None:
    from tasks.shared.fairness import worsening_bounds

    sensitive, y, p = _population()
    fair = (p >= 0.35).astype(int)
    judged = assess(CONTRACT, sensitive, y, p, threshold=0.35, limits=FairnessLimits())
    same = worsening_bounds(CONTRACT, sensitive, y, fair, fair, judged)
    assert same[("sex", "demographic_parity_difference")] == 0.0  # identical decisions: no evidence either way
    rng = np.random.default_rng(9)
    jittered = np.where(rng.random(len(y)) < 0.03, 1 - fair, fair)  # a few flipped decisions: noise
    noisy = worsening_bounds(CONTRACT, sensitive, y, jittered, fair, judged)
    assert noisy[("sex", "equalized_odds_difference")] <= 0
    _, _, p_biased = _population(biased=True)
    unfair = (p_biased >= 0.35).astype(int)
    judged_unfair = assess(CONTRACT, sensitive, y, p_biased, threshold=0.35, limits=FairnessLimits())
    worse = worsening_bounds(CONTRACT, sensitive, y, unfair, fair, judged_unfair)
    assert worse[("sex", "demographic_parity_difference")] > 0.2  # women refused far more often: beyond noise
    assert worse[("sex", "equalized_odds_difference")] > 0.2
