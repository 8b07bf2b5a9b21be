"""The alert policy: violations, hysteresis, severity and the drift event's payload."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.monitor import policy
from tasks.monitor.policy import MonitorPolicy


def record(champion: str, violated: bool, status: str = "judged", start: str = "s") -> dict[str, Any]:
    return {
        "champion": champion,
        "status": status,
        "violations": ["feature_drift"] if violated else [],
        "window": {"start": start, "end": f"end of {start}"},
    }


def test_alert_needs_k_of_the_last_n_judged_windows_the_latest_included() -> None:
    rules = MonitorPolicy(alert_k=2, alert_n=3)
    assert not policy.alert([record("1", True)], rules).alert  # one violation is noise
    assert policy.alert([record("1", True), record("1", False), record("1", True)], rules).alert
    assert not policy.alert([record("1", True), record("1", True), record("1", False)], rules).alert  # recovered
    # the first violation fell out of the last three
    assert not policy.alert([record("1", True), record("1", False), record("1", False), record("1", True)], rules).alert
    no_data = record("1", False, status="no_data")
    assert policy.alert([record("1", True), no_data, record("1", True)], rules).alert  # empty windows don't count
    assert not policy.alert([record("1", True), record("2", True)], rules).alert  # a new champion starts afresh
    with pytest.raises(ValueError, match="cannot exceed"):
        MonitorPolicy(alert_k=4, alert_n=3)


def test_the_alert_record_says_how_many_windows_violated() -> None:
    decision = policy.alert([record("1", True), record("1", True)], MonitorPolicy(alert_k=2, alert_n=3))
    assert decision.as_record() == {
        "alert": True,
        "violated_windows": 2,
        "judged_windows": 2,
        "k": 2,
        "n": 3,
        "reason": "2 of the last 2 judged windows violated (alert at 2 of 3, the latest included)",
    }
    assert policy.alert([], MonitorPolicy()).as_record() == {"alert": False, "reason": "no windows"}


def test_a_window_is_judged_only_with_enough_rows() -> None:
    rules = MonitorPolicy(min_rows=100)
    assert policy.status_of(0, rules) == "no_data"
    assert policy.status_of(99, rules) == "too_few_rows"
    assert policy.status_of(100, rules) == "judged"


def test_violations_name_what_broke_the_policy() -> None:
    rules = MonitorPolicy(drift_share=0.2, max_quality_share=0.01)
    drifted = {"drifted": ["income"], "share": 0.25, "score": {"drifted": True}}
    assert policy.violations(drifted, 0.02, True, True, rules) == [
        "feature_drift",
        "score_drift",
        "data_quality",
        "performance",
        "estimated_performance",
    ]
    few = {"drifted": ["income"], "share": 0.1, "score": {"drifted": False}}
    assert policy.violations(few, 0.01, False, False, rules) == []  # under both thresholds: nothing
    assert policy.violations({}, 0.0, False, False, rules) == []


def test_severity_is_high_for_performance_quality_score_drift_or_wide_drift() -> None:
    assert policy.severity(["feature_drift"], 0.1) == "medium"
    assert policy.severity(["feature_drift"], 0.3) == "high"
    assert policy.severity(["feature_drift", "score_drift"], 0.1) == "high"
    assert policy.severity(["data_quality"], 0.0) == "high"
    assert policy.severity(["performance"], 0.0) == "high"


def test_the_drift_event_is_small_and_dates_the_drift_from_the_kth_last_violated_window() -> None:
    rules = MonitorPolicy(alert_k=2, alert_n=3)
    earlier = [record("1", True, start="w1"), record("1", False, start="w2"), record("2", True, start="w0")]
    columns = [{"column": f"f{i}", "score": 0.123456 + i, "drifted": i % 2 == 0} for i in range(50)]
    latest = {
        **record("1", True, start="w3"),
        "drift": {"columns": columns, "share": 0.5},
    }
    payload = policy.drift_event_payload(latest, earlier, "contract.yaml", rules)
    assert payload["drift_start"] == "w1"  # champion 1's second-last violated window; champion 2's is ignored
    assert payload["window_start"] == "w3" and payload["champion"] == "1" and payload["contract"] == "contract.yaml"
    assert len(payload["features"]) == 20 and payload["features"]["f0"] == 0.1235  # the first 20, rounded
    assert all(int(name[1:]) % 2 == 0 for name in payload["features"])  # drifted columns only
    assert payload["severity"] == "high" and payload["violations"] == ["feature_drift"]
