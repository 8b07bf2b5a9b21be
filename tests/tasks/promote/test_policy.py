"""Promotion rules on small records: eligibility, compare-and-set, rollback, approval, infra and rollout verdicts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tasks.promote import policy
from tasks.promote.policy import DeployError, PromotionConflict

ELIGIBLE = {
    "eligible": True,
    "gates": {"quality": {"verdict": "pass"}, "champion": {"verdict": "pass", "compared_with": "3"}},
}


# --- which version may be promoted ---------------------------------------------------------------------------


def test_an_eligible_version_is_a_candidate_compared_with_the_champion_its_gate_saw() -> None:
    candidate = policy.eligible_candidate("credit", "4", ELIGIBLE)
    assert (candidate.version, candidate.compared_with) == ("4", "3")


def test_the_first_version_was_compared_with_no_champion() -> None:
    evidence = {"eligible": True, "gates": {"champion": {"verdict": "pass", "compared_with": None}}}
    assert policy.eligible_candidate("credit", "1", evidence).compared_with is None


def test_a_version_without_evidence_is_refused() -> None:
    with pytest.raises(DeployError, match=r"credit v4 is not eligible for promotion \(gates: \{\}\)"):
        policy.eligible_candidate("credit", "4", {})


def test_a_version_that_failed_a_gate_is_refused_and_the_failed_gates_are_named() -> None:
    evidence = {
        "eligible": False,
        "gates": {"quality": {"verdict": "fail"}, "fairness": {"verdict": "pass"}, "behaviour": {"verdict": "error"}},
    }
    with pytest.raises(DeployError, match="not eligible") as refused:
        policy.eligible_candidate("credit", "4", evidence)
    assert "'quality': 'fail'" in str(refused.value) and "'behaviour': 'error'" in str(refused.value)
    assert "fairness" not in str(refused.value)


def test_promotion_moves_the_champion_to_previous() -> None:
    assert policy.plan_promotion("credit", "4", "3", "3") == policy.Promotion(champion="4", previous="3")
    assert policy.plan_promotion("credit", "1", None, None) == policy.Promotion(champion="1", previous=None)


def test_promotion_is_refused_when_the_champion_moved_since_the_comparison() -> None:
    with pytest.raises(PromotionConflict, match="the champion of credit is v5, but v4 was compared with v3"):
        policy.plan_promotion("credit", "4", "5", "3")
    with pytest.raises(PromotionConflict, match="compared with no champion: re-evaluate it against v5"):
        policy.plan_promotion("credit", "4", "5", None)


def test_the_champion_is_not_promoted_again() -> None:
    with pytest.raises(DeployError, match="already the champion") as refused:
        policy.plan_promotion("credit", "4", "4", "4")
    assert not isinstance(refused.value, PromotionConflict)


def test_rollback_brings_the_previous_champion_back() -> None:
    assert policy.plan_rollback("credit", champion="5", previous="4") == policy.Rollback(champion="4", rolled_back="5")


def test_rollback_needs_a_previous_champion_and_a_champion() -> None:
    with pytest.raises(DeployError, match="no previous champion to roll back to"):
        policy.plan_rollback("credit", champion="5", previous=None)
    with pytest.raises(DeployError, match="no champion to roll back"):
        policy.plan_rollback("credit", champion=None, previous="4")


def test_approval_is_asked_in_production_unless_the_run_says_otherwise() -> None:
    plain = policy.Candidate(version="3", compared_with=None)
    assert policy.approval_reason(plain, None, production=True) == "every promotion in production is approved"
    assert policy.approval_reason(plain, None, production=False) is None
    assert policy.approval_reason(plain, True, production=False) == "requested by the deploy run"
    assert policy.approval_reason(plain, False, production=True) is None


def _limits(**values: float) -> dict[str, Any]:
    contract = {"min_roc_auc": 0.65, "max_demographic_parity_difference": 0.15}
    applied = {**contract, **values}
    loosened = [n for n in values if n in contract and values[n] != contract[n]]
    return {"eligible": True, "gates": {}, "limits": {"values": applied, "contract": contract, "loosened": loosened}}


def test_a_version_judged_by_looser_limits_needs_a_person_whatever_the_run_says() -> None:
    loose = policy.eligible_candidate("credit", "3", _limits(max_demographic_parity_difference=0.3))
    assert loose.approval_required == (
        "judged by limits looser than its contract's: max_demographic_parity_difference 0.3 (contract: 0.15)"
    )
    for requested in (None, False, True):
        for production in (False, True):
            assert policy.approval_reason(loose, requested, production) == loose.approval_required
    assert policy.eligible_candidate("credit", "3", _limits()).approval_required is None


def test_a_version_that_does_not_record_its_limits_needs_approval() -> None:
    old = policy.eligible_candidate("credit", "3", {"eligible": True, "gates": {}})
    assert old.approval_required == "the version does not record the limits it was judged by"
    assert policy.approval_reason(old, False, production=False) == old.approval_required


# --- infra validation -----------------------------------------------------------------------------------------


def _measured(**changes: Any) -> policy.InfraMeasurement:
    values = {
        "version": "4",
        "scorer_uri": "models:/m-1",
        "golden_rows": 50,
        "max_abs_difference": 0.0,
        "latency_p50_ms": 2.0,
        "latency_p95_ms": 3.0,
        "load_seconds": 1.5,
    }
    return policy.InfraMeasurement(**{**values, **changes})


def test_golden_scores_within_the_tolerance_and_budget_pass() -> None:
    report = policy.judge_infra(_measured(max_abs_difference=policy.TOLERANCE), latency_budget_ms=50.0)
    assert report.verdict == "pass" and report.problems == []
    assert list(report.model_dump()) == [  # the keys the deployment history has always kept
        "version",
        "scorer_uri",
        "golden_rows",
        "max_abs_difference",
        "latency_p50_ms",
        "latency_p95_ms",
        "load_seconds",
        "latency_budget_ms",
        "verdict",
        "problems",
    ]


def test_golden_scores_that_differ_fail_infra_validation() -> None:
    difference = policy.golden_difference([0.1, 0.5, 0.9], [0.1, 0.5 + 1e-4, 0.9])
    assert difference == pytest.approx(1e-4)
    report = policy.judge_infra(_measured(max_abs_difference=difference), latency_budget_ms=50.0)
    assert report.verdict == "fail"
    assert report.problems == ["golden records scored differently: max |difference| 0.0001 > 1e-06"]


def test_a_request_over_the_latency_budget_fails_infra_validation() -> None:
    report = policy.judge_infra(_measured(latency_p50_ms=12.34), latency_budget_ms=10.0)
    assert report.verdict == "fail" and report.problems == ["single-request latency 12.3 ms over the 10.0 ms budget"]


def test_golden_scores_cannot_be_compared_without_one_score_per_record() -> None:
    with pytest.raises(ValueError, match="2 scores for 3 golden records"):
        policy.golden_difference([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 scores for 0 golden records"):
        policy.golden_difference([], [])


# --- shadow and canary rollouts -------------------------------------------------------------------------------


def _plan(strategy: policy.RolloutStrategy = "shadow", min_requests: int = 3) -> policy.RolloutPlan:
    return policy.plan_rollout(strategy, 0.25, max_error_rate=0.01, max_p99_ms=20.0, min_requests=min_requests)


def test_a_shadow_scores_every_request_and_a_canary_a_share() -> None:
    assert _plan("shadow").share == 0.0
    assert _plan("canary").share == 0.25


def test_the_rollout_tags_the_scoring_services_read() -> None:
    plan = _plan("canary").model_copy(update={"champion": "3"})
    assert plan.tags() == {
        "rollout.strategy": "canary",
        "rollout.share": "0.25",
        "rollout.max_error_rate": "0.01",
        "rollout.max_p99_ms": "20.0",
        "rollout.min_requests": "3",
        "rollout.champion": "3",
        "rollout.verdict": "running",
    }


def test_a_rollout_plan_out_of_bounds_is_rejected() -> None:
    with pytest.raises(ValidationError, match="share"):
        policy.RolloutPlan(strategy="canary", share=1.0, max_error_rate=0.01, max_p99_ms=20.0, min_requests=3)
    with pytest.raises(ValidationError, match="min_requests"):
        policy.RolloutPlan(strategy="shadow", share=0.0, max_error_rate=0.01, max_p99_ms=20.0, min_requests=0)


def test_only_one_version_is_rolled_out_at_a_time() -> None:
    policy.check_no_other_rollout("credit", None, "4")
    policy.check_no_other_rollout("credit", "4", "4")
    with pytest.raises(DeployError, match="credit v5 is already being rolled out"):
        policy.check_no_other_rollout("credit", "5", "4")


def test_a_rollout_runs_while_its_version_holds_the_candidate_alias_with_verdict_running() -> None:
    assert policy.rollout_running({"version": "4", "verdict": "running"}, "4")
    assert not policy.rollout_running({"version": "4", "verdict": "rolled back"}, "4")
    assert not policy.rollout_running({"version": "5", "verdict": "running"}, "4")
    assert not policy.rollout_running(None, "4")


def _log(rows: list[tuple[str, str, str, float, str, float]]) -> pd.DataFrame:
    columns = ["request_id", "variant", "model_version", "score", "decision", "latency_ms"]
    return pd.DataFrame(rows, columns=columns)


SHADOWED = _log(
    [
        ("r1", "champion", "3", 0.20, "approve", 1.0),
        ("r1", "shadow", "4", 0.30, "approve", 5.0),
        ("r2", "champion", "3", 0.70, "refuse", 1.0),
        ("r2", "shadow", "4", 0.40, "approve", 6.0),
        ("r3", "shadow", "4", 0.50, "approve", 7.0),  # its champion answer was not logged
        ("r4", "canary", "4", 0.50, "approve", 100.0),  # another strategy: not this rollout's
    ]
)


def test_a_shadow_is_measured_on_its_own_answers_and_paired_with_the_champion() -> None:
    stats = policy.rollout_stats(SHADOWED, "4", "shadow")
    assert stats.requests == 3
    assert stats.p99_ms == pytest.approx(round(float(np.percentile([5.0, 6.0, 7.0], 99)), 3))
    assert stats.paired_with_champion == 2
    assert stats.mean_abs_score_difference == pytest.approx(0.2)
    assert stats.decision_agreement == 0.5


def test_a_canary_is_not_paired_and_no_answer_means_no_figures() -> None:
    canary = policy.rollout_stats(SHADOWED, "4", "canary")
    assert canary.model_dump() == {"requests": 1, "p99_ms": 100.0}
    assert policy.rollout_stats(SHADOWED, "9", "shadow").model_dump() == {"requests": 0}


def test_a_rollout_with_too_few_answers_fails_closed() -> None:
    outcome = policy.judge_rollout(_plan(min_requests=5), policy.RolloutStats(requests=3, p99_ms=1.0), 60)
    assert outcome.verdict == "failed" and outcome.reason == "only 3 answers logged in 60 s (needs 5)"
    silent = policy.judge_rollout(_plan(min_requests=5), policy.RolloutStats(requests=0), 60)
    assert silent.verdict == "failed"


def test_a_rollout_over_its_latency_budget_fails() -> None:
    outcome = policy.judge_rollout(_plan(), policy.RolloutStats(requests=10, p99_ms=25.0), 60)
    assert outcome.verdict == "failed" and outcome.reason == "p99 latency 25.0 ms over budget 20.0 ms"


def test_a_rollout_with_enough_answers_within_budget_passes_and_keeps_the_history_record_shape() -> None:
    plan = _plan().model_copy(update={"champion": "3"})
    outcome = policy.judge_rollout(plan, policy.rollout_stats(SHADOWED, "4", "shadow"), 60)
    assert outcome.verdict == "passed" and outcome.reason == "3 answers within budget"
    assert json.loads(outcome.model_dump_json()) == {
        "strategy": "shadow",
        "share": 0.0,
        "max_error_rate": 0.01,
        "max_p99_ms": 20.0,
        "min_requests": 3,
        "champion": "3",
        "requests": 3,
        "p99_ms": outcome.p99_ms,
        "paired_with_champion": 2,
        "mean_abs_score_difference": 0.2,
        "decision_agreement": 0.5,
        "verdict": "passed",
        "reason": "3 answers within budget",
    }


def test_a_rollout_a_service_ended_reports_the_reason_its_guard_recorded() -> None:
    history: list[dict[str, Any]] = [
        {"action": "shadow rollout started"},
        {"action": "rollout rolled back", "reason": "error rate 50.00% over budget 1.00%", "requests": 20},
        {"action": "approval"},
    ]
    outcome = policy.rolled_back(_plan(), history)
    assert (outcome.verdict, outcome.reason, outcome.requests) == (
        "rolled back",
        "error rate 50.00% over budget 1.00%",
        20,
    )
    unknown = policy.rolled_back(_plan(), [{"action": "shadow rollout started"}])
    assert unknown.reason == "ended outside this run"
    assert unknown.model_dump()["requests"] is None and "p99_ms" not in unknown.model_dump()
