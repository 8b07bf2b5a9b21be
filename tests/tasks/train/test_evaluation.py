"""Evaluating a candidate: the report, the gate verdicts in their order, the threshold, the champion comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.shared.features import SPLIT, feature_names, monotone_constraints, typed_features
from tasks.train.dataset import TrainingData
from tasks.train.evaluation import ChampionScores, UnscorableChampion, decide, evaluate, undecided, with_coverage
from tasks.train.evidence import GateVerdict
from tasks.train.gates import Gates, undecidable_quality

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
GATES = Gates(max_demographic_parity_difference=1, max_equalized_odds_difference=1, min_disparate_impact=0)


@pytest.fixture(scope="module")
def candidate() -> tuple[TrainingData, Any, np.ndarray]:
    """3,000 applications whose risk follows the contract's directions, split 60/20/20, and a model of them."""
    n = 3_000
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({name: rng.random(n) for name in feature_names(CONTRACT)})
    frame["months_delinquent"] = rng.integers(0, 12, n).astype(float)
    for column in CONTRACT.model_inputs:
        if column.categories:
            frame[column.name] = rng.choice(column.categories, n)
    frame["age"] = rng.integers(18, 80, n)
    frame["sex"] = rng.choice(["female", "male"], n)
    frame["marital_status"] = rng.choice(["married", "single", "other"], n)
    logit = 0.4 * frame["months_delinquent"] + 2 * frame["utilisation"] - 2 * frame["payment_ratio"] - 2.5
    frame["defaulted"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame[SPLIT] = np.repeat(["train", "validation", "test"], [1_800, 600, 600])
    data = TrainingData(frame, typed_features(frame, CONTRACT), frame["defaulted"].to_numpy())
    train = data.split("train")
    model = xgb.XGBClassifier(
        n_estimators=40, max_depth=3, enable_categorical=True, monotone_constraints=monotone_constraints(CONTRACT)
    ).fit(data.features[train], data.labels[train])
    return data, model, model.predict_proba(data.features[data.split("test")])[:, 1]


def test_without_a_champion_the_floors_decide_and_the_report_is_complete(
    candidate: tuple[TrainingData, Any, np.ndarray],
) -> None:
    data, model, scores = candidate
    result = evaluate(data, model, scores, CONTRACT, GATES, None, "/tmp/scores.npy")
    assert list(result.gates) == ["behaviour", "quality_floor", "champion", "fairness"]  # the order of the tags
    assert result.gates["champion"].reason == "no champion yet: absolute floors only"
    assert result.gates["quality_floor"].verdict == "pass" and result.report.metrics
    assert result.report.metrics["roc_auc"] > 0.7
    assert result.eligible == all(v.verdict == "pass" for v in result.gates.values())
    record = result.report.model_dump()
    assert "champion" not in record and "mitigation" not in record and "tuning" not in record
    assert list(record)[:3] == ["test_rows", "test_positives", "metrics"]
    assert record["test_rows"] == 600 and record["test_positives"] == int(data.labels[data.split("test")].sum())
    assert record["decision"]["chosen_on"] == "validation" and record["decision"]["threshold"] == result.threshold
    assert set(record["fairness"]) == {"age", "sex", "marital_status"}
    assert record["explanations"]["rows"] == 600 and record["explanations"]["global"]
    assert {"roc.png", "calibration.png", "expected_cost.png", "shap_importance.png"} <= set(result.plots)
    assert all(png.startswith(b"\x89PNG") for png in result.plots.values())
    assert result.test_scores == "/tmp/scores.npy"


def test_a_champion_that_cannot_be_scored_blocks_promotion(candidate: tuple[TrainingData, Any, np.ndarray]) -> None:
    data, model, scores = candidate
    result = evaluate(data, model, scores, CONTRACT, GATES, UnscorableChampion("champion v2 cannot be loaded"), "")
    assert result.gates["champion"].verdict == "blocked" and result.gates["champion"].reason.endswith("loaded")
    assert result.eligible is False
    assert "champion" not in result.report.model_dump()


def test_the_champion_is_compared_on_the_same_rows(candidate: tuple[TrainingData, Any, np.ndarray]) -> None:
    data, model, scores = candidate
    validation = model.predict_proba(data.features[data.split("validation")])[:, 1]
    itself = ChampionScores("3", validation=validation, test=scores)
    result = evaluate(data, model, scores, CONTRACT, GATES, itself, "")
    verdict = result.gates["champion"].model_dump()
    assert verdict["verdict"] == "pass" and list(verdict) == ["verdict", "compared_with", "reason"]
    assert verdict["compared_with"] == "3"
    compared = result.report.model_dump()["champion"]
    assert compared["version"] == "3" and compared["difference"] == 0.0
    assert compared["champion_roc_auc"] == pytest.approx(
        result.report.metrics["roc_auc"] if result.report.metrics else 0
    )
    worse = ChampionScores("3", validation=validation, test=np.where(data.labels[data.split("test")] == 1, 0.99, 0.01))
    assert evaluate(data, model, scores, CONTRACT, GATES, worse, "").gates["champion"].verdict == "fail"


def test_the_threshold_is_chosen_on_the_test_window_when_validation_holds_one_class() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    decision, on_validation = decide(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]), y, p, CONTRACT)
    assert not on_validation and decision.expected_cost == 0.0
    decision, on_validation = decide(np.array([0, 1]), np.array([0.2, 0.95]), y, p, CONTRACT)
    assert on_validation and decision.threshold > 0.2  # the validation split's threshold, judged on the test rows


def test_a_window_too_small_to_judge_records_only_its_counts() -> None:
    blocked = undecidable_quality(120, 10, Gates())
    assert blocked is not None
    result = undecided(120, 10, blocked, "scores.npy")
    assert result.report.model_dump() == {"test_rows": 120, "test_positives": 10}
    assert {k: v.model_dump() for k, v in result.gates.items()} == {
        "quality": {"verdict": "blocked", "reason": blocked.reason}
    }
    assert result.eligible is False and result.threshold == 0.5 and result.plots == {}


def test_the_feature_coverage_gate_comes_first_and_decides_eligibility_with_the_others(
    candidate: tuple[TrainingData, Any, np.ndarray],
) -> None:
    data, model, scores = candidate
    judged = evaluate(data, model, scores, CONTRACT, GATES, None, "")
    passed = with_coverage(judged, GateVerdict(verdict="pass", reason="every feature table at or above 95%"))
    assert list(passed.gates) == ["feature_coverage", "behaviour", "quality_floor", "champion", "fairness"]
    assert passed.eligible == judged.eligible and passed.report == judged.report
    short = with_coverage(judged, GateVerdict(verdict="fail", reason="credit_history: 82.10%"))
    assert short.gates["feature_coverage"].reason == "credit_history: 82.10%" and short.eligible is False


def test_a_failed_fairness_gate_tries_group_thresholds_where_the_contract_allows(
    candidate: tuple[TrainingData, Any, np.ndarray],
) -> None:
    data, model, scores = candidate
    strict = Gates(min_disparate_impact=0.999, min_group_outcomes=1, min_group_rows=10)
    result = evaluate(data, model, scores, CONTRACT, strict, None, "")
    record = result.report.model_dump()
    failed = {a for a, r in record["fairness"].items() if r["verdict"] == "fail"}
    assert "age" in failed  # random ages: no band's approval rate is within 0.1% of another's
    tried = record["mitigation"]
    assert tried["attribute"] == "age" and set(tried["policy"]) <= {"18-25", "25-35", "35-50", "50-65", "65-101"}
    assert tried["verdict"]["verdict"] in ("pass", "fail")
    fairness = result.gates["fairness"]
    assert fairness.verdict == tried["verdict"]["verdict"]
    assert fairness.mitigation == "threshold_optimizer:age" and "(single threshold: " in fairness.reason
    untried = evaluate(data, model, scores, CONTRACT, strict.model_copy(update={"mitigation": "none"}), None, "")
    assert "mitigation" not in untried.report.model_dump() and untried.gates["fairness"].verdict == "fail"


def test_an_age_band_absent_from_validation_is_decided_by_the_single_threshold_and_counted(
    candidate: tuple[TrainingData, Any, np.ndarray],
) -> None:
    """No validation applicant is 65 or older: the test window's are decided by the one threshold, not refused."""
    data, model, scores = candidate
    frame = data.frame.copy()
    frame.loc[data.split("validation") & (frame["age"] >= 65), "age"] = 40
    elders = int(((frame["age"] >= 65) & data.split("test")).sum())
    strict = Gates(min_disparate_impact=0.999, min_group_outcomes=1, min_group_rows=10)
    result = evaluate(TrainingData(frame, data.features, data.labels), model, scores, CONTRACT, strict, None, "")
    tried = result.report.model_dump()["mitigation"]
    assert elders > 0 and "65-101" not in tried["policy"] and "verdict" in tried
    assert tried["method"].endswith(
        f"the age groups absent from it are decided by the single threshold (test rows: 65-101 {elders:,})"
    )
    assert tried["fairness"]["age"]["groups"]["65-101"]["rows"] == elders  # judged with the rule it deploys
