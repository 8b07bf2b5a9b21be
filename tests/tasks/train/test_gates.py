"""The promotion gates: each decides from what the evaluation measured, and fails closed when it cannot decide."""

from __future__ import annotations

from typing import Any

from closedloop.contract import FairnessPolicy, load_contract
from closedloop.settings import PROJECT_ROOT
from tasks.train.coverage import FeatureCoverage
from tasks.train.evidence import GateVerdict, Mitigation
from tasks.train.gates import (
    Gates,
    behaviour_verdict,
    champion_unavailable,
    effective_gates,
    eligible,
    fairness_verdict,
    feature_coverage,
    mitigated_fairness,
    no_champion,
    noninferiority,
    quality_floor,
    undecidable_quality,
)

GATES = Gates()


def _judged(verdict: str, dp: float = 0.05, eo: float = 0.05, failures: list[str] | None = None) -> dict[str, Any]:
    return {
        "verdict": verdict,
        "demographic_parity_difference": dp,
        "equalized_odds_difference": eo,
        "failures": failures or [],
    }


def test_a_test_window_too_small_or_one_sided_blocks_the_quality_gate() -> None:
    assert undecidable_quality(1_000, 100, GATES) is None
    small = undecidable_quality(199, 50, GATES)
    assert small is not None and small.verdict == "blocked"
    assert (
        small.reason
        == "cannot decide on 199 test rows with 50 positives (need 200 rows and 20 positives of each class)"
    )
    few = undecidable_quality(1_000, 19, GATES)
    assert few is not None and few.verdict == "blocked"
    only_defaults = undecidable_quality(500, 500, GATES)
    assert only_defaults is not None and only_defaults.verdict == "blocked"


def test_the_quality_floor_is_inclusive() -> None:
    assert quality_floor(0.65, GATES).verdict == "pass"
    below = quality_floor(0.6499, GATES)
    assert below.verdict == "fail" and below.reason == "ROC-AUC 0.6499 vs floor 0.65"


def test_behaviour_failures_are_named() -> None:
    checked = {
        "directional": {"utilisation": {"verdict": "pass"}},
        "invariance": {"age": {"verdict": "pass", "reason": "not a model input"}, "sex": {"max_change": 0.0}},
        "minimum_functionality": {"verdict": "pass"},
    }
    passed = behaviour_verdict({**checked, "verdict": "pass", "failures": []})
    assert passed == GateVerdict(
        verdict="pass",
        reason="directional (utilisation); invariance (sex); invariance by construction (age: not model inputs); "
        "minimum functionality",
    )
    # a check that did not run is not named as one that did
    none = {
        "directional": {},
        "invariance": {"age": {"verdict": "pass"}},
        "minimum_functionality": {"verdict": "skipped"},
    }
    assert behaviour_verdict({**none, "verdict": "pass", "failures": []}).reason == (
        "invariance by construction (age: not model inputs); not run: directional, minimum functionality (the "
        "contract declares no risk direction)"
    )
    failed = behaviour_verdict({"verdict": "fail", "failures": ["directional(income)", "minimum functionality"]})
    assert failed.verdict == "fail" and failed.reason == "directional(income); minimum functionality"


def test_a_champion_that_cannot_be_scored_blocks_and_none_lets_the_floors_decide() -> None:
    assert champion_unavailable("champion v3 cannot be loaded").verdict == "blocked"
    assert no_champion() == GateVerdict(verdict="pass", reason="no champion yet: absolute floors only")


def test_non_inferiority_judges_the_lower_bound_against_the_margin() -> None:
    close = noninferiority({"difference": -0.002, "lower": -0.009, "upper": 0.005}, "4", GATES)
    assert close.verdict == "pass" and close.compared_with == "4"
    worse = noninferiority({"difference": -0.004, "lower": -0.01, "upper": 0.002}, "4", GATES)
    assert worse.verdict == "fail"  # the bound must be above -margin, not on it
    assert worse.reason == "AUC difference -0.0040, 95% lower bound -0.0100 vs margin -0.01"


def test_fairness_fails_on_an_absolute_limit_and_lists_what_it_could_not_judge() -> None:
    failed = fairness_verdict({"sex": _judged("fail", failures=["disparate impact 0.71 < 0.8"])}, None, GATES)
    assert failed.verdict == "fail" and failed.reason == "sex: disparate impact 0.71 < 0.8"
    small = {"verdict": "skipped", "reason": "fewer than two groups with at least 50 rows"}
    unjudged = fairness_verdict({"sex": _judged("pass"), "age": small}, None, GATES)
    assert unjudged.verdict == "fail"  # not judged is never a pass
    assert unjudged.reason == (
        "age: not judged (fewer than two groups with at least 50 rows); judge it, or waive it in the contract with "
        "a reason"
    )
    waived = fairness_verdict({"sex": _judged("pass"), "age": small}, None, GATES, waivers={"age": "37 applicants"})
    assert waived.verdict == "pass"
    assert waived.reason == (
        "within limits (not judged, waived: age (fewer than two groups with at least 50 rows; waived: 37 applicants))"
    )


def test_worse_than_the_champion_needs_the_margin_and_the_bootstrap_bound() -> None:
    new, old = {"sex": _judged("pass", dp=0.10)}, {"sex": _judged("pass", dp=0.05)}
    assert fairness_verdict(new, old, GATES).verdict == "fail"  # point estimates alone: 0.10 > 0.05 + 0.02
    noise = fairness_verdict(new, old, GATES, {("sex", "demographic_parity_difference"): -0.01})
    assert noise.verdict == "pass"  # the increase is within the bootstrap's noise
    real = fairness_verdict(new, old, GATES, {("sex", "demographic_parity_difference"): 0.01})
    assert real.verdict == "fail" and "95% lower bound of the increase +0.010" in real.reason
    small = fairness_verdict({"sex": _judged("pass", dp=0.06)}, old, GATES)
    assert small.verdict == "pass"  # within the allowed worsening


def test_the_group_threshold_candidate_decides_the_fairness_gate_only_when_judged() -> None:
    single = GateVerdict(verdict="fail", reason="age: disparate impact 0.7 < 0.8")
    assert mitigated_fairness(single, Mitigation(skipped="no failing attribute (sex) allows it")) == single
    judged = Mitigation(attribute="age", verdict=GateVerdict(verdict="pass", reason="within limits"))
    mitigated = mitigated_fairness(single, judged)
    assert mitigated.verdict == "pass" and mitigated.mitigation == "threshold_optimizer:age"
    assert mitigated.reason == (
        "with group thresholds on age: within limits (single threshold: age: disparate impact 0.7 < 0.8)"
    )


def _coverage(rows: int, missing: dict[str, int], left_out: int) -> FeatureCoverage:
    shares = {table: (rows - m) / rows if rows else 0.0 for table, m in missing.items()}
    return FeatureCoverage(rows=rows, left_out=left_out, missing=missing, coverage=shares)


def test_feature_coverage_fails_below_the_contracts_share_naming_the_table() -> None:
    short = feature_coverage(_coverage(10_000, {"profiles": 0, "credit_history": 1_790}, 1_790), 0.95)
    assert short.verdict == "fail"
    assert short.reason == (
        "credit_history: rows at their time for 8,210 of 10,000 applications (82.10%), below 95%; "
        "1,790 left out of the training set"
    )
    both = feature_coverage(_coverage(100, {"profiles": 6, "credit_history": 30}, 31), 0.955)
    assert both.verdict == "fail" and both.reason.startswith(
        "profiles: rows at their time for 94 of 100 applications (94.00%)"
    )
    assert "below 95.5%; credit_history: rows at their time for 70 of 100 applications (70.00%)" in both.reason


def test_feature_coverage_passes_at_the_threshold_and_says_what_was_left_out() -> None:
    at = feature_coverage(_coverage(100, {"profiles": 5, "credit_history": 0}, 5), 0.95)
    assert at.verdict == "pass"
    assert at.reason == (
        "every feature table at or above 95%: profiles 95.00%, credit_history 100.00%; 5 left out of the training set"
    )
    none = feature_coverage(_coverage(100, {}, 0), 0.95)
    assert none.verdict == "pass" and none.reason.startswith("no stored feature table")


def test_feature_coverage_blocks_when_nothing_was_retrieved() -> None:
    blocked = feature_coverage(_coverage(0, {"profiles": 0}, 0), 0.95)
    assert blocked.verdict == "blocked" and "cannot be judged" in blocked.reason
    nan = FeatureCoverage(rows=10, left_out=0, missing={"profiles": 0}, coverage={"profiles": float("nan")})
    assert feature_coverage(nan, 0.95).verdict == "fail"  # a share that is no number never passes


def test_eligible_only_when_every_gate_passed() -> None:
    passed = GateVerdict(verdict="pass", reason="")
    assert eligible({"quality_floor": passed, "champion": passed})
    assert not eligible({"quality_floor": passed, "champion": GateVerdict(verdict="blocked", reason="")})
    assert not eligible({"quality_floor": passed, "fairness": GateVerdict(verdict="fail", reason="")})
    assert not eligible({})  # no gate decided anything


def test_fairness_limits_come_from_the_override_then_the_contract_then_the_gates() -> None:
    synthetic = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    contract = synthetic.model_copy(
        update={"fairness": FairnessPolicy(min_group_rows=30, max_equalized_odds_difference=0.1, mitigation="none")}
    )
    override = FairnessPolicy(min_group_rows=20, min_disparate_impact=0.9)
    gates, record = effective_gates(contract, Gates(min_roc_auc=0.7), override)
    assert (gates.min_group_rows, gates.min_disparate_impact) == (20, 0.9)  # the override wins
    assert (gates.max_equalized_odds_difference, gates.mitigation) == (0.1, "none")  # then the contract
    assert gates.max_demographic_parity_difference == 0.15 and gates.min_roc_auc == 0.7  # the run's gates
    assert record.source == {
        "max_demographic_parity_difference": "default",
        "max_equalized_odds_difference": "contract",
        "min_disparate_impact": "override",
        "min_group_rows": "override",
        "min_group_outcomes": "default",
        "max_fairness_worsening": "default",
        "mitigation": "contract",
    }
    assert record.limits["min_group_rows"] == 20 and record.override
    plain, unchanged = effective_gates(synthetic, GATES)
    assert plain == GATES and not unchanged.override and set(unchanged.source.values()) == {"default"}


def test_limits_looser_than_the_contracts_are_named_stricter_ones_are_not() -> None:
    from tasks.train.gates import limits_record

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    applied, _ = effective_gates(contract, Gates(min_roc_auc=0.5, min_disparate_impact=0.9, mitigation="none"))
    record = limits_record(contract, applied, guards={"cooldown_minutes": 60})
    assert record.loosened == ["min_roc_auc"]  # a higher disparate-impact floor is stricter; mitigation is a choice
    assert record.values["min_roc_auc"] == 0.5 and record.contract["min_roc_auc"] == 0.65
    assert record.guards == {"cooldown_minutes": 60}
    same, _ = effective_gates(contract, Gates())
    assert limits_record(contract, same).loosened == []
    wider, _ = effective_gates(contract, Gates(), FairnessPolicy(max_demographic_parity_difference=0.3))
    assert limits_record(contract, wider).loosened == ["max_demographic_parity_difference"]
