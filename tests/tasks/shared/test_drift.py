"""Drift verdicts from reference profiles and the label-free performance estimate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from closedloop.contract import Drift, load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared import drift

CONTRACT = load_contract(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml")
FEATURES = ["income", "utilisation", "months_delinquent", "loan_purpose", "channel", "loan_amount"]


def raw_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """The textbook PSI on reference deciles, written out independently of tasks.shared.drift."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    r = np.histogram(reference, edges)[0] / len(reference)
    c = np.histogram(current, edges)[0] / len(current)
    r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def frame(n: int, seed: int, income_factor: float = 1.0, new_purpose_share: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    purposes = np.array(["debt_consolidation", "car", "home_improvement", "education", "medical", "business"])
    purpose = purposes[rng.choice(6, n, p=[0.35, 0.2, 0.15, 0.08, 0.07, 0.15])].astype(object)
    purpose[rng.random(n) < new_purpose_share] = "crypto"
    channel = np.array(["branch", "online", "broker"])[rng.choice(3, n, p=[0.3, 0.55, 0.15])].astype(object)
    channel[rng.random(n) < 0.03] = None
    return pd.DataFrame(
        {
            "income": np.exp(rng.normal(10.5, 0.4, n)) * income_factor,
            "utilisation": np.clip(rng.beta(2, 3, n) * 1.2, 0, 1.5),
            "months_delinquent": rng.poisson(0.6, n),
            "loan_purpose": purpose,
            "channel": channel,
            "loan_amount": np.exp(rng.normal(9.0, 0.6, n)),
        }
    )


def profile_of(reference: pd.DataFrame) -> dict:
    scores = 1 / (1 + np.exp(-(reference["utilisation"].to_numpy() * 3 - 3)))
    return drift.profile_frame(reference, CONTRACT, FEATURES, scores)


def test_psi_matches_the_textbook_formula_and_separates_drift_from_noise() -> None:
    reference, same, shifted = frame(50_000, 1), frame(50_000, 2), frame(50_000, 3, income_factor=1.4)
    profile = profile_of(reference)
    rule = Drift(method="psi", threshold=0.2)
    stable = drift.column_drift("income", profile["columns"]["income"], same["income"], rule)
    moved = drift.column_drift("income", profile["columns"]["income"], shifted["income"], rule)
    assert stable.score == pytest.approx(raw_psi(reference["income"].to_numpy(), same["income"].to_numpy()), abs=1e-9)
    assert moved.score == pytest.approx(raw_psi(reference["income"].to_numpy(), shifted["income"].to_numpy()), abs=1e-9)
    assert stable.score < 0.01 and not stable.drifted
    assert moved.score > 0.5 and moved.drifted


def test_wasserstein_is_normed_by_the_reference_spread_and_js_is_bounded() -> None:
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(0, 2, 100_000))
    profile = drift.profile_numeric(reference)
    half_sigma = drift.column_drift("x", profile, reference + 1.0, Drift(method="wasserstein", threshold=0.1))
    assert half_sigma.score == pytest.approx(0.5, abs=0.02) and half_sigma.drifted
    far = drift.column_drift("x", profile, reference + 1_000, Drift(method="jensenshannon", threshold=0.1))
    # every current row falls in the reference's top decile: r = 0.1 x 10, c = (0, ..., 0, 1), m = (r + c) / 2
    kl_r = 0.9 * np.log(0.1 / 0.05) + 0.1 * np.log(0.1 / 0.55)
    kl_c = np.log(1 / 0.55)
    assert far.score == pytest.approx(np.sqrt((kl_r + kl_c) / 2), abs=1e-6)
    assert far.score < np.sqrt(np.log(2)) and far.drifted


def test_unseen_categories_and_missing_values_are_their_own_bins() -> None:
    reference, current = frame(20_000, 1), frame(20_000, 2, new_purpose_share=0.25)
    profile = profile_of(reference)
    purpose = drift.column_drift("loan_purpose", profile["columns"]["loan_purpose"], current["loan_purpose"], Drift())
    assert purpose.unseen_share == pytest.approx(0.25, abs=0.01) and purpose.drifted
    gone = current["channel"].where(np.random.default_rng(3).random(len(current)) > 0.5, None)
    channel = drift.column_drift("channel", profile["columns"]["channel"], gone, Drift())
    assert channel.missing_current == pytest.approx(0.5 + 0.03 * 0.5, abs=0.02) and channel.drifted
    wasserstein_on_category = drift.column_drift(
        "loan_purpose", profile["columns"]["loan_purpose"], current["loan_purpose"], Drift(method="wasserstein")
    )
    assert wasserstein_on_category.method == "jensenshannon"  # categories have no order


def test_window_drift_names_the_drifted_columns_and_the_score() -> None:
    reference, current = frame(20_000, 1), frame(20_000, 2, income_factor=1.4)
    profile = profile_of(reference)
    scores = 1 / (1 + np.exp(-(current["utilisation"].to_numpy() * 3 - 2)))  # a riskier-looking population
    result = drift.window_drift(profile, current, drift.drift_rules(CONTRACT, FEATURES), scores)
    assert result["drifted"] == ["income"]
    assert result["score"]["drifted"]
    with pytest.raises(ValueError, match="no rows"):
        drift.column_drift("income", profile["columns"]["income"], current["income"].head(0), Drift())


def test_expected_auc_estimates_the_auc_of_calibrated_scores_without_labels() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(1.2, 9, 40_000)
    y = (rng.random(len(p)) < p).astype(int)
    assert drift.expected_auc(p) == pytest.approx(roc_auc_score(y, p), abs=0.01)
    uninformative = np.full(1000, 0.1)
    assert drift.expected_auc(uninformative) <= 0.5 + 1e-9  # ties give no credit
