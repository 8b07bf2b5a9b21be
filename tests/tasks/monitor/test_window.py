"""A window's verdicts: served rows, data quality, labels by as-of join, performance, the record it leaves."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from closedloop.contract import Contract
from tasks.monitor import window
from tasks.monitor.policy import Alert, MonitorPolicy
from tasks.monitor.verification import uncompared

FEATURES = ["income", "utilisation", "months_delinquent", "loan_purpose", "channel", "loan_amount"]


def at(day: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(2024, 3, day, tzinfo=UTC))


def test_served_rows_drop_the_shadow_answers_and_the_feature_prefix() -> None:
    log = pd.DataFrame(
        {"variant": ["champion", "shadow", "canary"], "score": [0.1, 0.2, 0.3], "feature.income": [1.0, 2.0, 3.0]}
    )
    rows = window.served(log)
    assert list(rows["variant"]) == ["champion", "canary"]
    assert list(rows["income"]) == [1.0, 3.0]


def test_data_quality_flags_rows_outside_the_contract(
    contract: Contract, features: Callable[..., pd.DataFrame]
) -> None:
    served = features(1_000, 1)
    served.loc[:9, "utilisation"] = 75.0  # reported in percent by a broken upstream job
    served.loc[:49, "loan_purpose"] = "crypto"
    quality = window.data_quality(contract, served, FEATURES)
    assert quality.columns["utilisation"] == {"out_of_range": pytest.approx(0.01)}
    assert quality.columns["loan_purpose"] == {"unseen_category": pytest.approx(0.05)}
    assert "income" not in quality.columns and "channel" not in quality.columns  # channel is nullable
    assert quality.worst_share == pytest.approx(0.05)


def tables(contract: Contract) -> window.OutcomeTables:
    applications = pd.DataFrame(
        {"customer_id": [7, 7, 8], "application_id": [70, 71, 80], "applied_at": [at(1), at(10), at(2)]}
    )
    outcomes = pd.DataFrame(
        {"application_id": [70, 71, 80], "observed_at": [at(5), at(25), at(6)], "defaulted": [1, 0, 0]}
    )
    profiles = pd.DataFrame(
        {
            "customer_id": [7, 8],
            "profile_at": [at(1), at(1)],
            "age": [30, 70],
            "sex": ["female", "male"],
            "marital_status": ["single", "married"],
        }
    )
    return window.OutcomeTables(applications, outcomes, {"profiles": profiles})


def test_each_request_gets_the_label_of_its_latest_application_once_observed(contract: Contract) -> None:
    requests = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "entity_id": [7, 7, 8],
            "scored_at": [at(3), at(12), at(3)],
            "score": [0.9, 0.2, 0.1],
            "decision": ["refuse", "approve", "approve"],
        }
    )
    rows = window.attach_outcomes(contract, requests, tables(contract), now=at(20)).set_index("request_id")
    assert rows.loc["a", "defaulted"] == 1  # application 70, observed on the 5th
    assert np.isnan(rows.loc["b", "defaulted"])  # application 71: its outcome comes on the 25th, after ``now``
    assert rows.loc["c", "defaulted"] == 0
    assert rows.loc["c", "age"] == 70 and rows.loc["a", "sex"] == "female"  # sensitive attributes as of then
    later = window.attach_outcomes(contract, requests, tables(contract), now=at(26)).set_index("request_id")
    assert later.loc["b", "defaulted"] == 0
    known, y = window.labelled(contract, rows)
    assert known.sum() == 2 and sorted(y.tolist()) == [0, 1]


def test_performance_needs_enough_labels_then_compares_with_the_reference(contract: Contract) -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    rows = pd.DataFrame({"defaulted": y.astype(float), "score": y * 0.3 + rng.random(n) * 0.7})
    rows["decision"] = np.where(rows["score"] > 0.5, "refuse", "approve")
    profile = {"test_metrics": {"roc_auc": 0.99}}
    too_few = window.performance(contract, rows.head(50), profile, MonitorPolicy(min_labelled=100))
    assert too_few.verdict == "no_verdict" and too_few.reason and "need 100 rows" in too_few.reason
    assert set(too_few.model_dump(exclude_unset=True)) == {"labelled_rows", "reference", "verdict", "reason"}
    judged = window.performance(contract, rows, profile, MonitorPolicy(min_labelled=100, auc_tolerance=0.03))
    auc = roc_auc_score(y, rows["score"])
    assert judged.metrics and judged.metrics["roc_auc"] == pytest.approx(auc) and 0.7 < auc < 0.96
    assert judged.degraded and judged.verdict == "degraded"  # below 0.99 - 0.03
    reference = {"test_metrics": {"roc_auc": auc + 0.02}}
    kept = window.performance(contract, rows, reference, MonitorPolicy(min_labelled=100, auc_tolerance=0.03))
    assert not kept.degraded and kept.verdict == "ok"
    assert {"metrics", "intervals", "calibration_gap", "degraded"} <= set(kept.model_dump(exclude_unset=True))


def test_the_label_free_estimate_degrades_when_scores_lose_their_spread() -> None:
    rules = MonitorPolicy(expected_auc_tolerance=0.05)
    spread = np.random.default_rng(1).beta(1.2, 9, 5_000)
    profile = {"expected_auc": 0.75}
    assert window.estimated_performance(np.full(5_000, 0.1), profile, rules).verdict == "degraded"
    informative = window.estimated_performance(spread, profile, rules)
    assert informative.expected_auc and informative.expected_auc > 0.7 and informative.verdict == "ok"
    empty = window.estimated_performance(np.array([]), profile, rules)
    assert empty.model_dump(exclude_unset=True) == {"verdict": "no_verdict", "reason": "no scores"}


def test_the_record_keeps_the_keys_its_readers_use(contract: Contract) -> None:
    span = window.Span(start="2024-03-01T00:00:00+00:00", end="2024-03-02T00:00:00+00:00")
    empty = window.WindowRecord(dataset="d", window=span, champion="3", rows=0, status="no_data")
    empty = empty.model_copy(update={"alert": Alert(alert=False, reason="no windows")})
    assert empty.as_json() == {
        "dataset": "d",
        "window": {"start": span.start, "end": span.end},
        "champion": "3",
        "rows": 0,
        "status": "no_data",
        "alert": {"alert": False, "reason": "no windows"},
    }
    verdicts = window.Verdicts(
        drift={"columns": [{"column": "income", "drifted": True}], "drifted": ["income"], "share": 1.0},
        quality=window.DataQuality(columns={}, worst_share=0.0),
        performance=window.Performance(labelled_rows=0, reference={}, verdict="no_verdict", reason="none yet"),
        estimated_performance=window.EstimatedPerformance(verdict="no_verdict", reason="no scores"),
        violations=["feature_drift"],
    )
    judged = window.WindowRecord(
        dataset="d",
        window=span,
        champion="3",
        rows=500,
        status="judged",
        verdicts=verdicts,
        verification=uncompared("3", ["feature_drift"], [], "no previous champion"),
        alert=Alert(alert=True, reason="2 of 3"),
        event_id="e1",
    )
    record = judged.as_json()
    assert list(record) == [
        "dataset",
        "window",
        "champion",
        "rows",
        "status",
        "drift",
        "quality",
        "performance",
        "estimated_performance",
        "violations",
        "verification",
        "alert",
        "event_id",
        "event_occurred",
    ]
    assert record["performance"] == {"labelled_rows": 0, "reference": {}, "verdict": "no_verdict", "reason": "none yet"}
    assert record["verification"]["verdict"] == "pass" and "labelled_rows" not in record["verification"]
    assert verdicts.fast_drift() == {"income": True}


def test_drift_chunks_split_the_judged_columns_in_the_contracts_order(contract: Contract) -> None:
    names = ["income", "utilisation", "loan_amount", "channel", "loan_purpose"]
    profile = {"columns": {name: {"kind": "x"} for name in names}}
    parts = window.drift_chunks(profile, [*names, "score", "not_a_feature"], contract, chunks=2)
    assert len(parts) == 2
    judged = [name for part in parts for name in part.rules]
    assert sorted(judged) == sorted(names) and set(parts[0].references) == set(parts[0].rules)
    assert window.drift_chunks(profile, ["score"], contract, chunks=4) == []
    assert len(window.drift_chunks(profile, names, contract, chunks=64)) == len(names)  # at most one per column
