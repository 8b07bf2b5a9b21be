from __future__ import annotations

import numpy as np
import pandas as pd
import xgboost as xgb

from tasks.shared.explain import contributions, global_importance, importance_by_group, top_reasons


def _model() -> tuple[xgb.XGBClassifier, pd.DataFrame]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(
        {
            "months_delinquent": rng.integers(0, 12, 2000).astype(float),
            "noise": rng.random(2000),
            "purpose": pd.Categorical(rng.choice(["car", "business"], 2000)),
        }
    )
    y = (rng.random(2000) < 1 / (1 + np.exp(-(x["months_delinquent"] - 6)))).astype(int)
    return xgb.XGBClassifier(n_estimators=40, max_depth=3, enable_categorical=True).fit(x, y), x


def test_contributions_add_up_to_the_score() -> None:
    model, x = _model()
    contribs = contributions(model, x)
    margin = model.get_booster().predict(xgb.DMatrix(x, enable_categorical=True), output_margin=True)
    np.testing.assert_allclose(contribs.sum(axis=1), margin, rtol=1e-4, atol=1e-4)


def test_the_planted_driver_ranks_first_globally_and_in_every_group() -> None:
    model, x = _model()
    contribs = contributions(model, x)
    names = list(x.columns)
    assert next(iter(global_importance(contribs, names))) == "months_delinquent"
    by_group = importance_by_group(contribs, names, x["purpose"].astype(str))
    assert set(by_group) == {"car", "business"}
    assert all(next(iter(v)) == "months_delinquent" for v in by_group.values())


def test_reasons_only_name_what_raised_the_risk() -> None:
    names = ["a", "b", "c"]
    reasons = top_reasons(np.array([0.5, -2.0, 0.1, -1.0]), names, k=3)
    assert reasons == [{"feature": "a", "contribution": 0.5}, {"feature": "c", "contribution": 0.1}]


def test_applicants_without_the_attribute_form_no_group() -> None:
    """A sensitive column read back from parquet as pandas strings, with pandas' NA where it was missing."""
    rng = np.random.default_rng(1)
    contribs = rng.random((300, 3))
    groups = pd.Series(rng.choice(["a", "b", None], 300)).astype("string")
    assert groups.isna().any()
    assert set(importance_by_group(contribs, ["x", "y"], groups)) == {"a", "b"}
