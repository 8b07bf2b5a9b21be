"""Group thresholds (Fairlearn's ThresholdOptimizer) as the fairness-mitigated candidate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from closedloop.contract import Column
from tasks.train import mitigation

AGE = Column(name="age", type="int", source="profiles", sensitive=True, bands=[18, 25, 65], group_thresholds=True)


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, pd.Series]:
    """Young applicants are riskier, through an input that carries age's signal."""
    rng = np.random.default_rng(seed)
    age = pd.Series(rng.integers(18, 65, n))
    young = (age < 25).to_numpy()
    x = pd.DataFrame({"utilisation": rng.normal(0.8 * young, 1.0, n), "noise": rng.normal(size=n)})
    y = (rng.random(n) < 1 / (1 + np.exp(-(x["utilisation"] - 0.3)))).astype(int).to_numpy()
    return x, y, age


def test_group_thresholds_close_the_approval_gap_on_unseen_rows() -> None:
    x, y, _ = _data(6000, 1)
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3).fit(x, y)
    xv, yv, agev = _data(3000, 2)
    xt, _, aget = _data(3000, 3)
    single = (model.predict_proba(xt)[:, 1] >= 0.5).astype(int)
    groups_t = mitigation.group_labels(aget, AGE)
    gap = abs(single[groups_t == "18-25"].mean() - single[groups_t == "25-65"].mean())
    optimizer = mitigation.fit(model, xv, yv, mitigation.group_labels(agev, AGE))
    decided = mitigation.decide(optimizer, xt, groups_t, 7, model.predict_proba(xt)[:, 1], 0.5)
    refuse = decided.refuse
    assert decided.single_threshold_rows == {}
    mitigated_gap = abs(refuse[groups_t == "18-25"].mean() - refuse[groups_t == "25-65"].mean())
    assert gap > 0.1
    assert mitigated_gap < gap / 2
    again = mitigation.decide(optimizer, xt, groups_t, 7, model.predict_proba(xt)[:, 1], 0.5)
    assert np.array_equal(refuse, again.refuse)  # reproducible
    policy = mitigation.policy(optimizer)
    assert set(policy) == {"18-25", "25-65"}
    assert all(0 <= r["p0"] <= 1 and r["p0"] + r["p1"] == pytest.approx(1) for r in policy.values())


def test_missing_ages_are_a_group_of_their_own() -> None:
    labels = mitigation.group_labels(pd.Series([20, None, 40]), AGE)
    assert list(labels) == ["18-25", "unknown", "25-65"]


def test_a_group_absent_from_validation_is_decided_by_the_single_threshold_and_counted() -> None:
    x, y, age = _data(2000, 4)
    model = xgb.XGBClassifier(n_estimators=10).fit(x, y)
    old = (age >= 25).to_numpy()
    optimizer = mitigation.fit(model, x[old], y[old], mitigation.group_labels(age[old], AGE))
    groups = mitigation.group_labels(age, AGE)
    scores = model.predict_proba(x)[:, 1]
    decided = mitigation.decide(optimizer, x, groups, 7, scores, 0.4)
    young = groups == "18-25"
    assert decided.single_threshold_rows == {"18-25": int(young.sum())} and young.sum() > 0
    assert np.array_equal(decided.refuse[young], (scores[young] >= 0.4).astype(int))
    # the groups it saw keep the optimizer's own decisions
    own = optimizer.predict(x[~young], sensitive_features=groups[~young], random_state=7)
    assert np.array_equal(decided.refuse[~young], own)


def test_one_class_in_validation_is_refused() -> None:
    x, y, age = _data(500, 5)
    model = xgb.XGBClassifier(n_estimators=10).fit(x, y)
    with pytest.raises(mitigation.MitigationError, match="one class only"):
        mitigation.fit(model, x, np.zeros(len(y), dtype=int), mitigation.group_labels(age, AGE))
