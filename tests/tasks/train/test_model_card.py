"""The model card: what a reader of the registered version sees, from its evidence record."""

from __future__ import annotations

from typing import Any

from tasks.train.model_card import model_card


def _evidence(**report: Any) -> dict[str, Any]:
    return {
        "contract_version": 2,
        "contract_fingerprint": "0123456789abcdef",
        "feature_service": "credit_model_v1",
        "data_window": ["2025-01-01T00:00:00+00:00", "2025-09-30T00:00:00+00:00"],
        "training_rows": 12_345,
        "training_positives": 678,
        "code_commit": "0123456789abcdef0123",
        "started_by": "event:evt-1",
        "eligible": False,
        "report": {"test_rows": 10, "test_positives": 2, **report},
        "gates": {"quality_floor": {"verdict": "pass", "reason": "ROC-AUC 0.8000 vs floor 0.65"}},
    }


def test_the_card_names_lineage_metrics_and_gates() -> None:
    card = model_card(
        "credit",
        _evidence(
            metrics={"roc_auc": 0.8},
            intervals={"roc_auc": [0.75, 0.85]},
            decision={"threshold": 0.2, "expected_cost": 0.31, "tp": 1, "fp": 2, "tn": 3, "fn": 4},
        ),
    )
    assert card.startswith("# Model card: credit\n")
    assert "- Contract: credit v2 (`0123456789abcdef`), FeatureService `credit_model_v1`" in card
    assert "- Data window: 2025-01-01 to 2025-09-30, 12,345 labelled applications (678 defaults)" in card
    assert "- Code: `0123456789ab`; started by: event:evt-1" in card
    assert "| roc_auc | 0.8000 | 0.7500 - 0.8500 |" in card
    assert "Decision rule deployed: one threshold for everyone. Decision threshold 0.2000" in card
    assert "TP 1, FP 2, TN 3, FN 4." in card
    assert "- **quality_floor**: pass (ROC-AUC 0.8000 vs floor 0.65)" in card
    assert "Fairness mitigation" not in card and "group thresholds (" not in card


def test_a_blocked_evaluation_still_gives_a_card() -> None:
    card = model_card("credit", _evidence())
    assert "## Metrics on the out-of-time test window" in card and "Decision threshold" not in card


def test_group_thresholds_are_shown_with_their_policy_and_the_scoring_limit() -> None:
    evidence = _evidence(
        mitigation={
            "attribute": "age",
            "method": "fairlearn ThresholdOptimizer",
            "policy": {
                "18-25": {
                    "operator0": ">",
                    "threshold0": 0.3,
                    "p0": 0.4,
                    "operator1": ">",
                    "threshold1": 0.5,
                    "p1": 0.6,
                }
            },
            "expected_cost": 0.33,
            "expected_cost_single_threshold": 0.31,
            "verdict": {"verdict": "pass", "reason": "within limits"},
        },
        tuning={"trials": [{}, {}, {}], "chosen": {"max_depth": 5, "learning_rate": 0.0712}},
    )
    evidence["gates"]["fairness"] = {"verdict": "pass", "reason": "ok", "mitigation": "threshold_optimizer:age"}
    card = model_card("credit", evidence)
    assert "verdict: **pass** (within limits)" in card
    assert "| 18-25 | > 0.3000 | 0.400 | > 0.5000 | 0.600 |" in card
    assert "random search of 3 trials judged on the validation split: max_depth=5, learning_rate=0.0712." in card
    assert "- Decisions use group thresholds (threshold_optimizer:age): the attribute must be supplied" in card


def test_a_mitigation_not_tried_says_why() -> None:
    card = model_card("credit", _evidence(mitigation={"skipped": "no failing attribute (sex) allows group thresholds"}))
    assert "Not tried: no failing attribute (sex) allows group thresholds" in card


def test_the_card_shows_the_coverage_per_feature_table_and_what_was_left_out() -> None:
    evidence = _evidence()
    evidence["feature_coverage"] = {
        "rows": 15_000,
        "left_out": 2_655,
        "missing": {"profiles": 2_655, "credit_history": 30},
        "coverage": {"profiles": 0.823, "credit_history": 0.998},
    }
    card = model_card("credit", evidence)
    assert (
        "- Feature coverage: profiles 82.30%, credit_history 99.80%; 2,655 of 15,000 matured applications left out "
        "(a feature table had no row at their time)"
    ) in card
    assert "- 2,655 matured applications without their feature rows were left out: neither the metrics nor" in card


def test_a_record_without_coverage_or_with_nothing_left_out_says_no_more() -> None:
    assert "Feature coverage" not in model_card("credit", _evidence())
    evidence = _evidence()
    evidence["feature_coverage"] = {
        "rows": 10,
        "left_out": 0,
        "missing": {"profiles": 0},
        "coverage": {"profiles": 1.0},
    }
    card = model_card("credit", evidence)
    assert "- Feature coverage: profiles 100.00%; 0 of 10 matured applications left out" in card
    assert "were left out: neither" not in card


def test_an_attribute_too_small_to_judge_is_shown_with_its_group_sizes() -> None:
    skipped = {"verdict": "skipped", "groups": {"yes": 193, "no": 7}, "reason": "fewer than two groups with 30 rows"}
    card = model_card("credit", _evidence(fairness={"foreign_worker": skipped}))
    assert "| foreign_worker | not judged: fewer than two groups with 30 rows (rows: yes 193, no 7) |" in card


def test_a_waived_attribute_shows_the_contract_s_reason() -> None:
    skipped = {"verdict": "skipped", "groups": {"yes": 193, "no": 7}, "reason": "too few", "waiver": "37 applicants"}
    card = model_card("credit", _evidence(fairness={"foreign_worker": skipped}))
    line = "| foreign_worker | not judged: too few (rows: yes 193, no 7); waived by the contract: 37 applicants |"
    assert line in card


def test_every_metric_shows_its_interval_or_says_none_was_recorded_never_nan() -> None:
    card = model_card(
        "credit",
        _evidence(metrics={"roc_auc": 0.8, "log_loss": 0.41}, intervals={"roc_auc": [0.75, 0.85]}),
    )
    assert "| log_loss | 0.4100 | not recorded |" in card and "nan" not in card.lower()
    card = model_card(
        "credit",
        _evidence(metrics={"log_loss": 0.41}, intervals={"log_loss": [0.39, 0.43]}),
    )
    assert "| log_loss | 0.4100 | 0.3900 - 0.4300 |" in card


def _by_group(approval: float, dp: float) -> dict[str, Any]:
    group = {"rows": 300, "approval_rate": approval, "tpr": 0.5, "fpr": 0.2, "roc_auc": 0.7}
    return {
        "verdict": "pass",
        "groups": {"18-25": group},
        "demographic_parity_difference": dp,
        "equalized_odds_difference": 0.05,
        "disparate_impact": 0.9,
    }


def test_the_fairness_figures_are_those_of_the_decision_rule_deployed() -> None:
    """Group thresholds chosen by the fairness gate: their figures lead, the single threshold's are compared."""
    decision = {"threshold": 0.2, "expected_cost": 0.31, "tp": 1, "fp": 2, "tn": 3, "fn": 4}
    mitigation = {
        "attribute": "age",
        "method": "fairlearn ThresholdOptimizer",
        "policy": {},
        "fairness": {"age": _by_group(0.777, 0.04)},
        "confusion": {"tp": 5, "fp": 6, "tn": 7, "fn": 8},
        "expected_cost": 0.33,
        "expected_cost_single_threshold": 0.31,
        "verdict": {"verdict": "pass", "reason": "within limits"},
    }
    evidence = _evidence(decision=decision, fairness={"age": _by_group(0.555, 0.25)}, mitigation=mitigation)
    evidence["gates"]["fairness"] = {"verdict": "pass", "reason": "ok", "mitigation": "threshold_optimizer:age"}
    card = model_card("credit", evidence)
    assert "## Fairness of the deployed decision: the group thresholds on age" in card
    assert "| age | 18-25 | 300 | 0.777 |" in card and "| age | 18-25 | 300 | 0.555 |" not in card
    assert "| age | DP diff 0.040, EO diff 0.050, DI 0.900 |" in card
    assert "Decision rule deployed: **group thresholds on age**" in card
    assert "confusion on the test window: TP 5, FP 6, TN 7, FN 8." in card
    assert "The single threshold decides only the age groups without a threshold of their own." in card
    assert "The single threshold on the same test window: age: DP diff 0.250, EO diff 0.050, DI 0.900." in card

    # the candidate was judged but the gate's verdict stayed the single threshold's: that rule is deployed
    del evidence["gates"]["fairness"]["mitigation"]
    card = model_card("credit", evidence)
    assert "## Fairness of the deployed decision: the single threshold" in card
    assert "| age | 18-25 | 300 | 0.555 |" in card and "| age | 18-25 | 300 | 0.777 |" not in card
    assert "Decision rule deployed: one threshold for everyone." in card
