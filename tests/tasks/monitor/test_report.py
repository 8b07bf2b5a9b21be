"""Evidently's drift report against the monitor's own verdicts, and their agreement record."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from closedloop.contract import Contract
from tasks.monitor import report
from tasks.shared import drift

FEATURES = ["income", "utilisation", "months_delinquent", "loan_purpose", "channel", "loan_amount"]


def test_fast_verdicts_agree_with_evidently_on_the_same_sample(
    contract: Contract, features: Callable[..., pd.DataFrame]
) -> None:
    reference = features(5_000, 11)
    current = features(5_000, 12, income_factor=1.4, new_purpose_share=0.25)
    scores = 1 / (1 + np.exp(-(reference["utilisation"].to_numpy() * 3 - 3)))
    profile = drift.profile_frame(reference, contract, FEATURES, scores)
    fast = drift.window_drift(profile, current, drift.drift_rules(contract, FEATURES), None)
    ours = {c["column"]: c["drifted"] for c in fast["columns"]}
    html, theirs = report.drift_report(reference, current, contract, FEATURES)
    assert set(theirs) == set(FEATURES)
    assert theirs == ours, {"ours": ours, "evidently": theirs}
    assert ours["income"] and ours["loan_purpose"] and not ours["utilisation"]
    assert "<html" in html.lower()


def test_agreement_compares_only_the_columns_both_judged() -> None:
    evidently = {"income": True, "channel": False, "age": True}
    fast = {"income": True, "channel": True, "loan_amount": False}
    found = report.agreement("file:///lake/r.html", "run-1", evidently, fast)
    assert found.compared_columns == 2  # income, channel; age and loan_amount were judged by one side only
    assert found.disagree == ["channel"]
    assert found.evidently_drifted == ["age", "income"]
    assert set(found.model_dump()) == {"uri", "mlflow_run", "compared_columns", "disagree", "evidently_drifted"}
