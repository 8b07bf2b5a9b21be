"""The evidence record's parts write what they were given, in the record's key order, and nothing else."""

from __future__ import annotations

import json

import pytest

from tasks.train.coverage import FeatureCoverage
from tasks.train.evidence import Evidence, GateVerdict, Mitigation, Report
from tasks.train.fit import Trial, Tuning


def test_a_gate_verdict_writes_only_the_fields_it_was_given() -> None:
    assert GateVerdict(verdict="pass", reason="ok").model_dump() == {"verdict": "pass", "reason": "ok"}
    champion = GateVerdict(verdict="fail", compared_with="4", reason="worse").model_dump()
    assert list(champion) == ["verdict", "compared_with", "reason"]
    fairness = GateVerdict(verdict="pass", reason="ok", mitigation="threshold_optimizer:age").model_dump(mode="json")
    assert list(fairness) == ["verdict", "reason", "mitigation"]


def test_a_report_keeps_the_records_order_and_a_given_null() -> None:
    report = Report(test_rows=10, test_positives=2, best_iteration=None, metrics={"roc_auc": 0.8})
    assert report.model_dump() == {
        "test_rows": 10,
        "test_positives": 2,
        "metrics": {"roc_auc": 0.8},
        "best_iteration": None,
    }
    tuned = report.model_copy(
        update={
            "tuning": Tuning(
                trials=[Trial(params={"max_depth": 3}, validation_auc=0.7, best_iteration=5)], chosen={"max_depth": 3}
            )
        }
    )
    assert list(tuned.model_dump())[-1] == "tuning"
    assert tuned.model_dump()["tuning"]["chosen"] == {"max_depth": 3}


def test_a_skipped_mitigation_says_only_why() -> None:
    assert Mitigation(skipped="no failing attribute () allows group thresholds").model_dump() == {
        "skipped": "no failing attribute () allows group thresholds"
    }
    assert Mitigation(attribute="age", skipped="one class").model_dump() == {"attribute": "age", "skipped": "one class"}


def test_the_record_serialises_with_its_nested_parts() -> None:
    evidence = Evidence(
        dataset="credit",
        contract_version=1,
        contract_fingerprint="f",
        feature_service="credit_model_v1",
        entity_frame_hash="h",
        data_window=["2025-01-01T00:00:00+00:00", "2025-06-30T00:00:00+00:00"],
        training_rows=100,
        training_positives=10,
        code_commit="abc",
        started_by="test",
        trained_at="2025-07-01T00:00:00+00:00",
        report=Report(test_rows=20, test_positives=3, intervals={"roc_auc": (0.7, 0.9)}),
        gates={"quality_floor": GateVerdict(verdict="pass", reason="ROC-AUC 0.8000 vs floor 0.65")},
        eligible=True,
        decision_threshold=0.3,
    )
    record = json.loads(json.dumps(evidence.model_dump(), default=str))
    assert list(record) == [  # the keys that promotion, serving and the monitor read, in the order always written
        "dataset",
        "contract_version",
        "contract_fingerprint",
        "feature_service",
        "entity_frame_hash",
        "data_window",
        "training_rows",
        "training_positives",
        "code_commit",
        "started_by",
        "trained_at",
        "report",
        "gates",
        "eligible",
        "decision_threshold",
    ]
    assert record["report"] == {"test_rows": 20, "test_positives": 3, "intervals": {"roc_auc": [0.7, 0.9]}}
    assert record["gates"] == {"quality_floor": {"verdict": "pass", "reason": "ROC-AUC 0.8000 vs floor 0.65"}}


def test_the_record_shows_the_feature_coverage_after_the_training_rows() -> None:
    coverage = FeatureCoverage(
        rows=120,
        left_out=20,
        missing={"profiles": 20, "credit_history": 0},
        coverage={"profiles": 1 / 6 * 5, "credit_history": 1.0},
    )
    evidence = Evidence(
        dataset="credit",
        contract_version=1,
        contract_fingerprint="f",
        feature_service="credit_model_v1",
        entity_frame_hash="h",
        data_window=["2025-01-01T00:00:00+00:00", "2025-06-30T00:00:00+00:00"],
        training_rows=100,
        training_positives=10,
        feature_coverage=coverage,
        code_commit="abc",
        started_by="test",
        trained_at="2025-07-01T00:00:00+00:00",
        report=Report(test_rows=20, test_positives=3),
        gates={"feature_coverage": GateVerdict(verdict="fail", reason="profiles: 100 of 120 applications")},
        eligible=False,
        decision_threshold=0.3,
    )
    record = json.loads(json.dumps(evidence.model_dump(), default=str))
    keys = list(record)
    assert keys[keys.index("training_positives") + 1] == "feature_coverage"
    assert record["feature_coverage"]["left_out"] == 20
    assert record["feature_coverage"]["missing"] == {"profiles": 20, "credit_history": 0}
    assert record["feature_coverage"]["coverage"]["profiles"] == pytest.approx(0.8333, abs=1e-4)
