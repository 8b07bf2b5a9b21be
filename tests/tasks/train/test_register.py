"""What a registration records besides the model: the run's params, metrics and tags, and the reference documents."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import load_contract
from closedloop.registry import REFERENCE_PROFILE, REFERENCE_SAMPLE
from closedloop.settings import PROJECT_ROOT
from tasks.shared.drift import SCORE
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT, feature_names, typed_features
from tasks.train.coverage import FeatureCoverage
from tasks.train.dataset import TrainingData, TrainingSet
from tasks.train.evidence import Evaluation, GateVerdict, Report
from tasks.train.fit import TrainingConfig, Trial, Tuning
from tasks.train.guards import AUTOMATIC_TAG
from tasks.train.register import GOLDEN_ROWS, evidence_of, reference_documents, run_record

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
NOW = datetime(2025, 7, 1, tzinfo=UTC)
TRAINING = TrainingSet(
    uri="file:///tmp/training.parquet",
    rows=1_000,
    positives=100,
    entity_hash="abc",
    window_start=datetime(2025, 1, 1, tzinfo=UTC),
    window_end=datetime(2025, 3, 31, tzinfo=UTC),
    feature_service="credit_synthetic_model_v1",
    contract_fingerprint=CONTRACT.fingerprint,
    coverage=FeatureCoverage(
        rows=1_250,
        left_out=250,
        missing={"profiles": 0, "credit_history": 250},
        coverage={"profiles": 1.0, "credit_history": 0.8},
    ),
)


def _evaluation(mitigation: str | None = None) -> Evaluation:
    fairness = GateVerdict(verdict="pass", reason="ok", **({"mitigation": mitigation} if mitigation else {}))
    return Evaluation(
        report=Report(test_rows=100, test_positives=10, metrics={"roc_auc": 0.8}, intervals={"roc_auc": (0.7, 0.9)}),
        gates={"quality_floor": GateVerdict(verdict="pass", reason="ok"), "fairness": fairness},
        eligible=True,
        threshold=0.1234567,
    )


def test_the_record_carries_lineage_and_the_search() -> None:
    tuning = Tuning(
        trials=[Trial(params={"max_depth": 3}, validation_auc=0.7, best_iteration=9)], chosen={"max_depth": 3}
    )
    evidence = evidence_of(TRAINING, _evaluation(), CONTRACT, tuning, "event:e", NOW).model_dump()
    assert evidence["data_window"] == ["2025-01-01T00:00:00+00:00", "2025-03-31T00:00:00+00:00"]
    assert evidence["entity_frame_hash"] == "abc" and evidence["trained_at"] == "2025-07-01T00:00:00+00:00"
    assert evidence["report"]["tuning"]["chosen"] == {"max_depth": 3}
    assert evidence["decision_threshold"] == 0.1234567 and evidence["contract_version"] == CONTRACT.version
    assert "tuning" not in evidence_of(TRAINING, _evaluation(), CONTRACT, None, "me", NOW).model_dump()["report"]


def test_the_record_counts_the_applications_left_out_per_feature_table() -> None:
    record = json.loads(json.dumps(evidence_of(TRAINING, _evaluation(), CONTRACT, None, "me", NOW).model_dump()))
    assert record["training_rows"] == 1_000
    assert record["feature_coverage"] == {
        "rows": 1_250,
        "left_out": 250,
        "missing": {"profiles": 0, "credit_history": 250},
        "coverage": {"profiles": 1.0, "credit_history": 0.8},
    }


@pytest.mark.parametrize("automatic", [False, True])
def test_params_metrics_and_tags_of_the_run(automatic: bool) -> None:
    evaluation = _evaluation("threshold_optimizer:age")
    evidence = evidence_of(TRAINING, evaluation, CONTRACT, None, "me", NOW).model_dump()
    params, metrics, tags = run_record(evidence, evaluation, CONTRACT, TrainingConfig(max_depth=5), automatic)
    assert params["max_depth"] == 5 and params["engine"] == "local" and params["window_days"] is None
    assert params["features"] == ",".join(feature_names(CONTRACT)) and params["entity_frame_hash"] == "abc"
    assert metrics == {"test_roc_auc": 0.8, "test_roc_auc_ci_low": 0.7, "test_roc_auc_ci_high": 0.9}
    assert tags["gate.quality_floor"] == "pass" and tags["eligible"] == "true"
    assert tags["decision_threshold"] == "0.123457" and tags["decision_policy"] == "threshold_optimizer:age"
    assert (tags.get(AUTOMATIC_TAG) == "true") is automatic


def test_a_single_threshold_is_the_default_policy() -> None:
    evaluation = _evaluation()
    evidence = evidence_of(TRAINING, evaluation, CONTRACT, None, "me", NOW).model_dump()
    assert (
        run_record(evidence, evaluation, CONTRACT, TrainingConfig(), False)[2]["decision_policy"] == "single_threshold"
    )


class _Constant:
    def predict_proba(self, frame: pd.DataFrame) -> Any:
        return np.column_stack([np.full(len(frame), 0.7), np.full(len(frame), 0.3)])


def test_the_golden_rows_and_the_monitors_reference_come_from_the_test_window() -> None:
    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.random(n) for name in feature_names(CONTRACT)})
    for column in CONTRACT.model_inputs:
        if column.categories:
            frame[column.name] = rng.choice(column.categories, n)
    frame[EVENT_TIMESTAMP] = pd.date_range("2025-01-01", periods=n, freq="D", tz="UTC")
    frame[SPLIT] = ["train"] * 120 + ["test"] * 80
    data = TrainingData(frame, typed_features(frame, CONTRACT), rng.integers(0, 2, n))
    scores = rng.random(80)
    documents = reference_documents(data, _Constant(), scores, _evaluation(), CONTRACT)
    golden = json.loads(documents["golden.json"])
    assert len(golden["rows"]) == GOLDEN_ROWS and golden["scores"] == [0.3] * GOLDEN_ROWS
    assert golden["rows"][0]["income"] == pytest.approx(frame.loc[120, "income"])  # the first test row
    profile = json.loads(documents[REFERENCE_PROFILE])
    assert profile["decision_threshold"] == 0.1234567 and profile["test_metrics"] == {"roc_auc": 0.8}
    assert profile["window"] == [str(frame.loc[120, EVENT_TIMESTAMP]), str(frame.loc[199, EVENT_TIMESTAMP])]
    sample = documents[REFERENCE_SAMPLE]
    assert isinstance(sample, bytes)
    rows = pd.read_parquet(io.BytesIO(sample))
    assert len(rows) == 80 and sorted(rows[SCORE]) == sorted(scores)  # every test row (fewer than 5,000), scored


def test_the_fairness_limits_applied_are_recorded_with_their_sources() -> None:
    from closedloop.contract import FairnessPolicy
    from tasks.train.gates import Gates, effective_gates

    evaluation = _evaluation()
    _, fairness = effective_gates(CONTRACT, Gates(), FairnessPolicy(min_group_rows=25))
    evidence = evidence_of(TRAINING, evaluation, CONTRACT, None, "me", NOW, fairness).model_dump()
    assert evidence["fairness_policy"]["limits"]["min_group_rows"] == 25
    assert evidence["fairness_policy"]["source"]["min_group_rows"] == "override"
    params, _, tags = run_record(evidence, evaluation, CONTRACT, TrainingConfig(), False)
    assert params["fairness.min_group_rows"] == 25 and params["fairness.min_group_rows.source"] == "override"
    assert params["fairness.mitigation"] == "threshold_optimizer" and tags["fairness.override"] == "true"
    assert "fairness_policy" not in evidence_of(TRAINING, evaluation, CONTRACT, None, "me", NOW).model_dump()
