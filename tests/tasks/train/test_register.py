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
from closedloop.registry import REFERENCE_PROFILE, REFERENCE_SAMPLE, version_description
from closedloop.settings import PROJECT_ROOT
from tasks.shared.drift import SCORE
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT, feature_names, typed_features
from tasks.train.coverage import FeatureCoverage
from tasks.train.dataset import TrainingData, TrainingSet
from tasks.train.evidence import Evaluation, GateVerdict, Mitigation, Report
from tasks.train.fit import TrainingConfig, Trial, Tuning
from tasks.train.guards import AUTOMATIC_TAG
from tasks.train.register import (
    GOLDEN_ROWS,
    Origin,
    evidence_of,
    reason,
    reference_documents,
    run_name,
    run_record,
    run_tags,
)

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
    assert metrics == {
        "test_roc_auc": 0.8,
        "test_roc_auc_ci_low": 0.7,
        "test_roc_auc_ci_high": 0.9,
        "decision_threshold": 0.1234567,
    }
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


@pytest.mark.parametrize(
    ("started_by", "automatic", "why"),
    [
        ("event:4f1c", True, "drift retrain"),
        ("deployment:train-evaluate (flow run 1, scheduled 2026-01-04 03:00)", True, "scheduled retrain"),
        ("deployment:train-evaluate (flow run 1, scheduled 2026-01-04 03:00)", False, "manual"),
        ("direct call (CLI or code)", False, "manual"),
        ("direct call (CLI or code)", True, "guarded retrain"),
    ],
)
def test_the_run_is_named_after_why_it_trained(started_by: str, automatic: bool, why: str) -> None:
    assert reason(started_by, automatic) == why


def test_the_run_name_gains_the_version_once_registered() -> None:
    start, end = datetime(2025, 6, 3, tzinfo=UTC), datetime(2025, 11, 28, tzinfo=UTC)
    assert run_name("drift retrain", start, end) == "train - drift retrain 2025-06..2025-11"
    assert run_name("drift retrain", start, end, "3") == "train v3 - drift retrain 2025-06..2025-11"
    assert run_name("manual", end, end, "12") == "train v12 - manual 2025-11"


def _measured(dp: float, eo: float | None, di: float) -> dict[str, Any]:
    return {
        "verdict": "pass",
        "demographic_parity_difference": dp,
        "equalized_odds_difference": eo,
        "disparate_impact": di,
    }


def _judged(mitigated: bool) -> Evaluation:
    """A report with a fairness analysis and a group-threshold candidate; ``mitigated``: the gate passed by it."""
    fairness = {"age": _measured(0.2, 0.3, 0.6), "sex": _measured(0.01, None, 0.98), "region": {"verdict": "skipped"}}
    report = Report(
        test_rows=100,
        test_positives=10,
        metrics={"roc_auc": 0.8},
        decision={"threshold": 0.2, "expected_cost": 1.5},
        fairness=fairness,
        mitigation=Mitigation(attribute="age", fairness={"age": _measured(0.05, 0.1, 0.9)}, expected_cost=1.75),
    )
    verdict = GateVerdict(verdict="pass", **({"mitigation": "threshold_optimizer:age"} if mitigated else {}))
    return Evaluation(report=report, gates={"fairness": verdict}, eligible=True, threshold=0.2)


@pytest.mark.parametrize("mitigated", [False, True])
def test_the_deployed_rules_cost_and_fairness_are_metrics(mitigated: bool) -> None:
    """Each fairness measure per judged attribute, the expected cost and the threshold: the group thresholds' when
    the version deploys them; nothing for a measure that was not computed or an attribute that was skipped."""
    evaluation = _judged(mitigated)
    evidence = evidence_of(TRAINING, evaluation, CONTRACT, None, "me", NOW).model_dump()
    metrics = run_record(evidence, evaluation, CONTRACT, TrainingConfig(), False)[1]
    assert metrics["decision_threshold"] == 0.2
    assert metrics["test_expected_cost"] == (1.75 if mitigated else 1.5)
    assert metrics["fairness.age.demographic_parity_difference"] == (0.05 if mitigated else 0.2)
    assert metrics["fairness.age.equalized_odds_difference"] == (0.1 if mitigated else 0.3)
    assert metrics["fairness.age.disparate_impact"] == (0.9 if mitigated else 0.6)
    fairness = {name for name in metrics if name.startswith("fairness.")}
    if mitigated:  # the group-threshold candidate's analysis is the deployed rule's
        assert fairness == {
            f"fairness.age.{m}"
            for m in ("demographic_parity_difference", "equalized_odds_difference", "disparate_impact")
        }
    else:
        assert (
            "fairness.sex.equalized_odds_difference" not in metrics and metrics["fairness.sex.disparate_impact"] == 0.98
        )
        assert not any(name.startswith("fairness.region.") for name in metrics)


def test_the_run_links_its_flow_run_event_and_contract() -> None:
    evidence = evidence_of(TRAINING, _evaluation(), CONTRACT, None, "event:evt-9", NOW).model_dump()
    origin = Origin(flow_run_id="0b1c", prefect_ui_url="http://127.0.0.1:4200/", trigger_event_id="evt-9")
    tags = run_tags(evidence, origin)
    assert tags["closedloop.prefect_flow_run"] == "http://127.0.0.1:4200/runs/flow-run/0b1c"
    assert tags["closedloop.prefect_flow_run_id"] == "0b1c" and tags["closedloop.trigger_event_id"] == "evt-9"
    assert tags["closedloop.contract_fingerprint"] == CONTRACT.fingerprint
    assert tags["closedloop.started_by"] == "event:evt-9" and tags["closedloop.data_window"] == "2025-01-01..2025-03-31"
    assert "[0b1c](http://127.0.0.1:4200/runs/flow-run/0b1c)" in tags["mlflow.note.content"]
    alone = run_tags(evidence, Origin())  # outside a flow run (a task's function called by code): no link
    assert not any(key.startswith(("closedloop.prefect", "closedloop.trigger")) for key in alone)


def test_a_long_description_is_cut_at_a_line_with_a_link_to_the_whole() -> None:
    card = "\n".join(f"| row {i} | {'x' * 40} |" for i in range(200))
    assert version_description(card[:4_000], "http://mlflow/card") == card[:4_000]
    cut = version_description(card, "http://mlflow/card", limit=5_000)
    assert len(cut) <= 5_000 and cut.endswith("[the whole text](http://mlflow/card).*")
    kept = cut.split("\n\n*Cut to")[0]
    assert card.startswith(kept) and card[len(kept)] == "\n"  # whole lines only: no table row cut in half
