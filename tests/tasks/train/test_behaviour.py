from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb

from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared.features import feature_names, monotone_constraints
from tasks.train.behaviour import run_all

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")


def _probes(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({name: rng.random(n) for name in feature_names(CONTRACT)})
    frame["months_delinquent"] = rng.integers(0, 12, n).astype(float)
    for col in CONTRACT.model_inputs:
        if col.categories:
            frame[col.name] = pd.Categorical(rng.choice(col.categories, n), categories=col.categories)
    return frame


def test_the_contract_directions_become_monotone_constraints() -> None:
    assert monotone_constraints(CONTRACT) == {"utilisation": 1, "months_delinquent": 1, "payment_ratio": -1}


def test_a_model_trained_under_the_constraints_passes() -> None:
    x = _probes(3000)
    rng = np.random.default_rng(5)
    logit = 0.4 * x["months_delinquent"] + 2 * x["utilisation"] - 2 * x["payment_ratio"] - 3 + rng.normal(0, 1, len(x))
    y = (logit > 0).astype(int)
    model = xgb.XGBClassifier(
        n_estimators=60, max_depth=4, enable_categorical=True, monotone_constraints=monotone_constraints(CONTRACT)
    ).fit(x, y)
    report = run_all(lambda f: model.predict_proba(f)[:, 1], x.head(200), CONTRACT)
    assert report["verdict"] == "pass", report["failures"]
    assert report["invariance"]["sex"]["reason"].startswith("not a model input")
    assert report["minimum_functionality"]["risky_probe"] > report["minimum_functionality"]["safe_probe"]


def test_a_model_that_rewards_delinquency_fails_with_the_feature_named() -> None:
    def perverse(frame: pd.DataFrame) -> np.ndarray:
        return 1 / (1 + np.exp(frame["months_delinquent"].to_numpy(dtype=float) - 6))

    report = run_all(perverse, _probes(), CONTRACT)
    assert report["verdict"] == "fail"
    assert "directional(months_delinquent)" in report["failures"]
    assert report["directional"]["months_delinquent"]["violations"] == 300
    assert "minimum functionality" in report["failures"]
