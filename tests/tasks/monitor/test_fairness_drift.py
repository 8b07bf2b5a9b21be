"""Fairness drift: served approval rates by group against the version's evidence and the contract's limits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from closedloop.contract import Contract, FairnessPolicy, Monitoring
from tasks.monitor import fairness_drift, policy, window
from tasks.monitor.policy import MonitorPolicy
from tasks.shared.fairness import FairnessLimits, assess, groups_of
from tasks.train.gates import Gates

THRESHOLD = 0.35


def population(n: int, seed: int, labelled: bool = True) -> pd.DataFrame:
    """Served rows as the monitor sees them: decision, score, label (NaN until matured), sensitive attributes."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, n),
            "sex": rng.choice(["female", "male"], n),
            "marital_status": rng.choice(["married", "single", "other"], n, p=[0.55, 0.44, 0.01]),
        }
    )
    y = (rng.random(n) < 0.2).astype(int)
    score = np.clip(0.25 + 0.3 * (y - 0.2) + rng.normal(0, 0.12, n), 0, 1)
    frame["score"] = score
    frame["decision"] = np.where(score >= THRESHOLD, "refuse", "approve")
    frame["defaulted"] = y.astype(float) if labelled else np.nan
    return frame


def evidence_of(contract: Contract, trained: pd.DataFrame) -> dict[str, Any]:
    """The evidence record's fairness part, as the training evaluation writes it for the test window."""
    y = trained["defaulted"].to_numpy(dtype=int)
    analysis = assess(contract, trained, y, trained["score"].to_numpy(), THRESHOLD, FairnessLimits())
    return {"report": {"fairness": analysis}, "gates": {"fairness": {"verdict": "pass"}}}


def refuse_women(served: pd.DataFrame, share: float, seed: int = 3, among: pd.Series | None = None) -> pd.DataFrame:
    """The injected fault: a ``share`` of the approved women are refused, nobody else is touched."""
    rng = np.random.default_rng(seed)
    hit = (served["sex"] == "female") & (served["decision"] == "approve") & (rng.random(len(served)) < share)
    if among is not None:
        hit &= among
    return served.assign(decision=served["decision"].mask(hit, "refuse"))


@pytest.fixture(scope="module")
def evidence(contract: Contract) -> dict[str, Any]:
    return evidence_of(contract, population(20_000, seed=1))


def test_a_population_served_as_trained_is_quiet(contract: Contract, evidence: dict[str, Any]) -> None:
    verdict = fairness_drift.judge(contract, population(20_000, seed=2, labelled=False), evidence)
    assert verdict.drifted == [] and {a.verdict for a in verdict.attributes.values()} == {"ok"}
    sex = verdict.attributes["sex"]
    trained = evidence["report"]["fairness"]["sex"]["groups"]["female"]["approval_rate"]
    assert sex.groups["female"].trained_approval_rate == pytest.approx(trained)
    assert abs(sex.groups["female"].gap_change or 1) < 0.02
    assert sex.tpr_gap is None  # no label has matured: error rates are not judged yet


def test_approvals_falling_for_one_group_only_drift_that_attribute_alone(
    contract: Contract, evidence: dict[str, Any]
) -> None:
    served = refuse_women(population(20_000, seed=2, labelled=False), share=0.3)
    verdict = fairness_drift.judge(contract, served, evidence)
    assert verdict.drifted == ["sex"]
    sex = verdict.attributes["sex"]
    assert sex.verdict == "drifted" and set(sex.drifted_groups) == {"female", "male"}
    assert sex.groups["female"].gap_change < -contract.monitoring.max_fairness_drift < 0
    assert any(b.startswith("approval rate of female moved") for b in sex.breaches)
    # every group of the other attributes lost the same share of its women: their gaps did not move
    assert verdict.attributes["marital_status"].verdict == "ok" and verdict.attributes["age"].verdict == "ok"
    payload = verdict.event_payload()
    assert list(payload["attributes"]) == ["sex"] and "female" in payload["attributes"]["sex"]["groups"]
    assert payload["action"] == "review"


def test_served_decisions_beyond_the_contracts_limits_drift_even_as_trained(
    contract: Contract, evidence: dict[str, Any]
) -> None:
    served = population(20_000, seed=2, labelled=False)
    strict = contract.model_copy(update={"fairness": FairnessPolicy(min_disparate_impact=1.0)})
    verdict = fairness_drift.judge(strict, served, evidence)
    assert "sex" in verdict.drifted
    assert verdict.attributes["sex"].drifted_groups == []  # nothing moved: the limit alone breaks
    assert any("below 1 (four-fifths rule)" in b for b in verdict.attributes["sex"].breaches)


def test_groups_below_min_group_rows_are_reported_not_judged(contract: Contract, evidence: dict[str, Any]) -> None:
    served = population(3_000, seed=2, labelled=False)
    other = served["marital_status"] == "other"
    served.loc[other, "decision"] = "refuse"  # a group of about 30 refused outright: too few rows to judge
    verdict = fairness_drift.judge(contract, served, evidence)
    marital = verdict.attributes["marital_status"]
    assert marital.verdict == "ok" and set(marital.groups) == {"married", "single"}
    assert marital.small_groups == {"other": int(other.sum())} and 0 < int(other.sum()) < 50
    raised = contract.model_copy(update={"fairness": FairnessPolicy(min_group_rows=2_000)})
    alone = fairness_drift.judge(raised, served, evidence).attributes["marital_status"]
    assert alone.verdict == "no_verdict" and "fewer than two groups with at least 2000" in str(alone.reason)


def test_a_small_groups_wobble_within_its_noise_is_not_drift(contract: Contract, evidence: dict[str, Any]) -> None:
    served = population(8_000, seed=2, labelled=False)
    other = served.index[served["marital_status"] == "other"]  # about 80 rows: two standard errors ~0.1
    approved = other[served.loc[other, "decision"] == "approve"]
    served.loc[approved[: len(other) * 7 // 100], "decision"] = "refuse"  # 7 points down, past 0.05
    group = fairness_drift.judge(contract, served, evidence).attributes["marital_status"].groups["other"]
    assert group.gap_change is not None and abs(group.gap_change) > contract.monitoring.max_fairness_drift
    assert group.noise is not None and abs(group.gap_change) < contract.monitoring.max_fairness_drift + group.noise
    assert not group.drifted


def test_matured_labels_judge_the_error_rate_gaps(contract: Contract, evidence: dict[str, Any]) -> None:
    served = population(20_000, seed=2)
    quiet = fairness_drift.judge(contract, served, evidence).attributes["sex"]
    assert quiet.verdict == "ok" and quiet.tpr_gap is not None and quiet.fpr_gap is not None
    assert quiet.trained["fpr_gap"] is not None
    # women who would have repaid are refused: the FPR gap widens while the defaults are treated alike
    repaid = served["defaulted"] == 0
    drifted = fairness_drift.judge(contract, refuse_women(served, 0.3, among=repaid), evidence).attributes["sex"]
    assert any(b.startswith("FPR gap") for b in drifted.breaches)
    assert not any(b.startswith("TPR gap") for b in drifted.breaches)
    assert drifted.groups["female"].fpr is not None and drifted.groups["female"].fpr > quiet.groups["female"].fpr + 0.1


def test_the_deployed_group_thresholds_are_what_the_window_is_compared_with(evidence: dict[str, Any]) -> None:
    mitigated = {"sex": {"verdict": "pass", "groups": {}}}
    record = {
        "report": {**evidence["report"], "mitigation": {"fairness": mitigated}},
        "gates": {"fairness": {"verdict": "pass", "mitigation": "threshold_optimizer:sex"}},
    }
    assert fairness_drift.trained_fairness(record) == mitigated
    assert fairness_drift.trained_fairness(evidence) == evidence["report"]["fairness"]


def test_group_codes_name_groups_as_the_evidence_does(contract: Contract) -> None:
    served = population(2_000, seed=4)
    served.loc[:9, "age"] = np.nan
    served.loc[10:14, "age"] = 101  # past the last band edge: no group, as in pd.cut
    for name in ("age", "sex"):
        column = contract.column(name)
        codes, names = fairness_drift.group_codes(served[name], column)
        decoded = [names[c] if c >= 0 else None for c in codes]
        expected = groups_of(served[name], column)
        assert decoded == [None if pd.isna(g) else str(g) for g in expected]


def test_the_contracts_limits_default_to_the_training_gates(contract: Contract) -> None:
    limits, gates = fairness_drift.limits_of(contract), Gates()
    assert limits.max_demographic_parity_difference == gates.max_demographic_parity_difference
    assert limits.max_equalized_odds_difference == gates.max_equalized_odds_difference
    assert limits.min_disparate_impact == gates.min_disparate_impact
    assert limits.min_group_rows == gates.min_group_rows
    assert limits.min_group_outcomes == gates.min_group_outcomes
    own = contract.model_copy(update={"fairness": FairnessPolicy(min_group_rows=7, min_disparate_impact=0.9)})
    assert (fairness_drift.limits_of(own).min_group_rows, fairness_drift.limits_of(own).min_disparate_impact) == (
        7,
        0.9,
    )


@pytest.mark.parametrize(("action", "alerts"), [("review", False), ("retrain", True)])
def test_the_contracts_action_decides_whether_fairness_drift_counts_toward_the_alert(
    contract: Contract, evidence: dict[str, Any], action: str, alerts: bool
) -> None:
    served = refuse_women(population(5_000, seed=2, labelled=False), share=0.3)
    judged = contract.model_copy(update={"monitoring": Monitoring(fairness_drift_action=action)})  # type: ignore[arg-type]
    no_drift = {"drifted": [], "columns": [], "share": 0.0}
    verdicts = window.verdicts(judged, served, served, {}, no_drift, MonitorPolicy(), evidence)
    assert verdicts.violations == ["fairness_drift"] and verdicts.fairness_drift is not None
    assert verdicts.review == ([] if alerts else ["fairness_drift"])
    record = window.WindowRecord(
        dataset="d", window=window.Span(start="s", end="e"), champion="1", rows=len(served), status="judged"
    )
    written = record.model_copy(update={"verdicts": verdicts}).as_json()
    assert written["fairness_drift"]["drifted"] == ["sex"] and written["violations"] == ["fairness_drift"]
    assert policy.alert([written, written], MonitorPolicy(alert_k=2, alert_n=3)).alert is alerts
