"""Evidently's drift report against the monitor's own verdicts, per column and for the window, and their record."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Contract
from tasks.monitor import report
from tasks.monitor.policy import MonitorPolicy, violations
from tasks.shared import drift

FEATURES = ["income", "utilisation", "months_delinquent", "loan_purpose", "channel", "loan_amount"]
HEADLINE = re.compile(r"Dataset Drift is (NOT )?detected\. Dataset drift detection threshold is ([0-9.]+)")


def ours(contract: Contract, reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, object]:
    """The monitor's fast drift record of ``current`` against ``reference``'s profile."""
    scores = 1 / (1 + np.exp(-(reference["utilisation"].to_numpy() * 3 - 3)))
    profile = drift.profile_frame(reference, contract, FEATURES, scores)
    return drift.window_drift(profile, current, drift.drift_rules(contract, FEATURES), None)


def headline(found: report.DriftReport) -> tuple[bool, float]:
    """What the report's headline says: dataset drift detected, and at which share of the columns."""
    said = HEADLINE.search(found.html)
    assert said is not None, "no dataset drift headline in the report"
    return said.group(1) is None, float(said.group(2))


@pytest.mark.parametrize("drift_share", [0.0, 1 / 3])
def test_on_a_drifted_window_evidently_and_the_monitor_agree_column_by_column_and_on_the_window(
    contract: Contract, features: Callable[..., pd.DataFrame], drift_share: float
) -> None:
    """Two of six columns drift: the window drifts under 'more than 0%', not under 'more than a third'."""
    reference = features(5_000, 11)
    current = features(5_000, 12, income_factor=1.4, new_purpose_share=0.25)
    fast = ours(contract, reference, current)
    columns = {c["column"]: c["drifted"] for c in fast["columns"]}
    found = report.drift_report(reference, current, contract, FEATURES, drift_share)
    assert set(found.columns) == set(FEATURES)
    assert found.columns == columns, {"ours": columns, "evidently": found.columns}
    assert columns["income"] and columns["loan_purpose"] and sum(columns.values()) == 2
    monitor = "feature_drift" in violations(fast, 0.0, False, False, MonitorPolicy(drift_share=drift_share))
    assert found.dataset_drift == monitor == (drift_share == 0.0)
    assert headline(found) == (monitor, found.threshold)  # the page says what the record says
    assert "closedloop's drift rule" in found.html and "<html" in found.html.lower()


def test_on_a_quiet_window_neither_says_drifted(contract: Contract, features: Callable[..., pd.DataFrame]) -> None:
    reference, current = features(5_000, 11), features(5_000, 13)
    fast = ours(contract, reference, current)
    found = report.drift_report(reference, current, contract, FEATURES, MonitorPolicy().drift_share)
    assert not any(found.columns.values()) and not fast["drifted"]
    assert not found.dataset_drift and "feature_drift" not in violations(fast, 0.0, False, False, MonitorPolicy())
    assert headline(found) == (False, 1 / 6)  # one drifted column of six would have been enough


def test_evidently_threshold_says_more_than_our_share_as_at_least_its_own() -> None:
    assert [report.dataset_threshold(d, 6) for d in (0.0, 0.1, 1 / 3, 0.5, 0.99, 1.0)] == [
        1 / 6,
        1 / 6,
        3 / 6,
        4 / 6,
        6 / 6,
        7 / 6,  # no share reaches it: ours never violates either
    ]
    for n in (1, 6, 7, 30):
        for share in np.linspace(0, 1, 41):
            threshold = report.dataset_threshold(float(share), n)
            assert [k / n > share for k in range(n + 1)] == [k / n >= threshold for k in range(n + 1)], (n, share)


def test_agreement_compares_only_the_columns_both_judged() -> None:
    evidently = report.DriftReport(
        html="", columns={"income": True, "channel": False, "age": True}, dataset_drift=True, threshold=1 / 3
    )
    fast = {"income": True, "channel": True, "loan_amount": False}
    found = report.agreement("file:///lake/r.html", "run-1", "http://mlflow/#/r", evidently, fast, False, 0.5)
    assert found.compared_columns == 2  # income, channel; age and loan_amount were judged by one side only
    assert found.disagree == ["channel"]
    assert found.evidently_drifted == ["age", "income"]
    assert (found.dataset_drift, found.evidently_dataset_drift, found.drift_share) == (False, True, 0.5)
    assert found.url == "http://mlflow/#/r"


def test_the_report_link_is_mlflow_s_page_of_the_run_artifact() -> None:
    url = report.mlflow_artifact_url("http://127.0.0.1:5000/", "3", "abc", report.REPORT_PATH)
    assert (
        url
        == "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifacts/evidently/data_drift.html?workflowType=machine_learning"
    )
