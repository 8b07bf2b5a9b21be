"""Evaluating a candidate on the out-of-time test window, its gate verdicts and its figures.

Metrics with intervals, the cost-minimising decision threshold, calibration, segments, explanations, behaviour,
fairness (with a group-threshold candidate when it fails) and the comparison with the champion. Pure: the
model, its scores and the champion's scores come in; an :class:`Evaluation` goes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from closedloop.contract import Contract
from tasks.shared import explain, metrics
from tasks.shared.fairness import FairnessLimits, assess, groups_of, worsening_bounds
from tasks.train import mitigation, plots
from tasks.train.behaviour import run_all as run_behaviour
from tasks.train.dataset import TrainingData
from tasks.train.evidence import Evaluation, GateVerdict, Mitigation, Report
from tasks.train.gates import (
    Gates,
    behaviour_verdict,
    champion_unavailable,
    eligible,
    fairness_verdict,
    mitigated_fairness,
    no_champion,
    noninferiority,
    quality_floor,
)

EXPLAIN_ROWS = 20_000  # test rows whose SHAP values give the global and by-group importance
PROBE_ROWS = 200  # test rows the behavioural tests perturb


@dataclass(frozen=True)
class ChampionScores:
    """The champion's scores on the candidate's validation and test rows (the same rows, the same order)."""

    version: str
    validation: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class UnscorableChampion:
    """A champion is registered but cannot be scored; ``reason`` says why (the champion gate blocks)."""

    reason: str


Champion = ChampionScores | UnscorableChampion | None  # None: no champion yet


@dataclass(frozen=True)
class _Judged:
    """The test window's labels, scores and sensitive attributes, and the decision at the chosen threshold."""

    labels: np.ndarray
    scores: np.ndarray
    decision: metrics.Decision
    chosen_on_validation: bool
    thresholds: np.ndarray  # the cost curve on the test window
    costs: np.ndarray
    sensitive: pd.DataFrame
    limits: FairnessLimits


def fairness_limits(gates: Gates) -> FairnessLimits:
    """The fairness gate's limits as the fairness analysis takes them."""
    return FairnessLimits(
        gates.max_demographic_parity_difference,
        gates.max_equalized_odds_difference,
        gates.min_disparate_impact,
        gates.min_group_rows,
        gates.max_fairness_worsening,
        gates.min_group_outcomes,
    )


def undecided(test_rows: int, test_positives: int, blocked: GateVerdict, test_scores: str) -> Evaluation:
    """The evaluation of a test window too small to judge: the quality gate blocks, nothing else is measured."""
    return Evaluation(
        report=Report(test_rows=test_rows, test_positives=test_positives),
        gates={"quality": blocked},
        eligible=False,
        threshold=0.5,
        test_scores=test_scores,
    )


def with_coverage(evaluation: Evaluation, coverage: GateVerdict) -> Evaluation:
    """The evaluation with the feature-coverage gate first: it judges the rows every other gate was judged on."""
    verdicts = {"feature_coverage": coverage, **evaluation.gates}
    return evaluation.model_copy(update={"gates": verdicts, "eligible": eligible(verdicts)})


def decide(
    y_validation: np.ndarray,
    p_validation: np.ndarray,
    y_test: np.ndarray,
    p_test: np.ndarray,
    contract: Contract,
) -> tuple[metrics.Decision, bool]:
    """The decision on the test window at the threshold of least expected cost on the validation split.

    Chosen on the validation split and judged on the test window, like everything else; on the test window itself
    when the validation split holds one class. The flag says whether the validation split chose it.
    """
    cost_fn, cost_fp = contract.decision.cost_false_negative, contract.decision.cost_false_positive
    if 0 < y_validation.sum() < len(y_validation):
        chosen = metrics.cost_threshold(y_validation, p_validation, cost_fn, cost_fp)
        return metrics.decision_at(y_test, p_test, chosen.threshold, cost_fn, cost_fp), True
    return metrics.cost_threshold(y_test, p_test, cost_fn, cost_fp), False


def _waivers(contract: Contract) -> dict[str, str]:
    """The sensitive attributes the contract lets the fairness gate pass unjudged, with the reason it gives."""
    return {c.name: c.fairness_waiver for c in contract.sensitive if c.fairness_waiver}


def evaluate(
    data: TrainingData,
    model: Any,
    scores: np.ndarray,
    contract: Contract,
    gates: Gates,
    champion: Champion,
    test_scores: str,
) -> Evaluation:
    """The candidate ``model`` (``scores``: its scores on the test window) judged against the gates."""
    judged = _judge(data, model, scores, contract, gates)
    parts = _measure(data, model, judged, contract, gates)
    verdicts = {
        "behaviour": behaviour_verdict(parts["behaviour"]),
        "quality_floor": quality_floor(parts["metrics"]["roc_auc"], gates),
    }
    compared = _compare(champion, data, judged, parts["fairness"], contract, gates)
    verdicts["champion"] = compared.verdict
    if compared.report is not None:
        parts["champion"] = compared.report
    waivers = _waivers(contract)
    verdicts["fairness"] = fairness_verdict(parts["fairness"], compared.fairness, gates, compared.bounds, waivers)
    if verdicts["fairness"].verdict == "fail" and gates.mitigation == "threshold_optimizer":
        candidate = group_thresholds(
            data, model, parts["fairness"], compared.fairness, judged, contract, gates, compared.refuse
        )
        parts["mitigation"] = candidate
        verdicts["fairness"] = mitigated_fairness(verdicts["fairness"], candidate)
    report = Report(test_rows=len(judged.labels), test_positives=int(judged.labels.sum()), **parts)
    # the figures show the decision rule the version deploys: its group thresholds once the fairness gate chose them
    deployed = parts["mitigation"].fairness if verdicts["fairness"].mitigation else parts["fairness"]
    return Evaluation(
        report=report,
        gates=verdicts,
        eligible=eligible(verdicts),
        threshold=judged.decision.threshold,
        plots=_figures(judged, compared.test_scores, parts["explanations"], deployed, gates),
        test_scores=test_scores,
    )


def _judge(data: TrainingData, model: Any, scores: np.ndarray, contract: Contract, gates: Gates) -> _Judged:
    """The decision threshold (chosen on the validation split) and the cost curve on the test window."""
    test, validation = data.split("test"), data.split("validation")
    y = data.labels[test]
    p_validation = model.predict_proba(data.features[validation])[:, 1]
    decision, on_validation = decide(data.labels[validation], p_validation, y, scores, contract)
    cost_fn, cost_fp = contract.decision.cost_false_negative, contract.decision.cost_false_positive
    thresholds, costs = metrics.cost_curve(y, scores, cost_fn, cost_fp)
    sensitive = data.frame.loc[test, [c.name for c in contract.sensitive if c.name in data.frame]]
    return _Judged(y, scores, decision, on_validation, thresholds, costs, sensitive, fairness_limits(gates))


def _measure(data: TrainingData, model: Any, judged: _Judged, contract: Contract, gates: Gates) -> dict[str, Any]:
    """What the report measures on the test window before the gates: every part up to the fairness analysis."""
    test = data.split("test")
    y, p, decision = judged.labels, judged.scores, judged.decision
    categorical = {
        c.name: data.frame.loc[test, c.name].to_numpy(dtype=object)
        for c in contract.model_inputs
        if c.categories and len(c.categories) <= 12
    }
    return {
        "metrics": metrics.metrics(y, p),
        "intervals": metrics.bootstrap_intervals(y, p),
        "decision": {
            "threshold": decision.threshold,
            "chosen_on": "validation" if judged.chosen_on_validation else "test (the validation split holds one class)",
            "expected_cost": decision.expected_cost,
            "lowest_expected_cost_on_test": float(judged.costs.min()),
            **decision.confusion,
        },
        "calibration": metrics.calibration(y, p),
        "segments": metrics.segments(y, p, categorical, min_rows=gates.min_group_rows),
        "best_iteration": int(model.best_iteration) if hasattr(model, "best_iteration") else None,
        "explanations": explanations(model, data, p, contract, gates),
        "behaviour": run_behaviour(
            lambda frame: model.predict_proba(frame)[:, 1], data.features[test].head(PROBE_ROWS), contract
        ),
        "fairness": assess(contract, judged.sensitive, y, p, decision.threshold, judged.limits),
    }


def explanations(
    model: Any, data: TrainingData, scores: np.ndarray, contract: Contract, gates: Gates
) -> dict[str, Any]:
    """Mean |SHAP| overall and by sensitive group, and the reasons behind the riskiest test row's score.

    SHAP on a fixed random sample of the test window: the mean |contribution| of 20,000 rows is within a few
    thousandths of the full window's, at a tenth of the time on a 200,000-row window.
    """
    test_rows = np.flatnonzero(data.split("test"))
    explained = np.sort(
        np.random.default_rng(0).choice(test_rows, size=min(EXPLAIN_ROWS, len(test_rows)), replace=False)
    )
    x = data.features
    contribs = explain.contributions(model, x.iloc[explained])
    names = list(x.columns)
    riskiest = test_rows[int(np.argmax(scores))]
    return {
        "rows": len(explained),
        "of_test_rows": len(test_rows),
        "global": explain.global_importance(contribs, names),
        "by_group": {
            c.name: explain.importance_by_group(
                contribs, names, groups_of(data.frame[c.name].iloc[explained], c), min_rows=gates.min_group_rows
            )
            for c in contract.sensitive
            if c.name in data.frame
        },
        "example_reasons": explain.top_reasons(explain.contributions(model, x.iloc[riskiest : riskiest + 1])[0], names),
    }


@dataclass(frozen=True)
class _Comparison:
    """The champion on the same test rows: the gate's verdict and what the fairness gate compares with."""

    verdict: GateVerdict
    report: dict[str, Any] | None = None
    fairness: dict[str, Any] | None = None
    refuse: np.ndarray | None = None
    test_scores: np.ndarray | None = None
    bounds: dict[tuple[str, str], float] | None = None


def _compare(
    champion: Champion,
    data: TrainingData,
    judged: _Judged,
    fairness: dict[str, Any],
    contract: Contract,
    gates: Gates,
) -> _Comparison:
    """Non-inferiority in AUC (paired bootstrap), and the champion's own decisions and fairness on the test window.

    ``fairness`` is the candidate's analysis: the bounds say how much less fair than the champion it is.
    """
    if champion is None:
        return _Comparison(no_champion())
    if isinstance(champion, UnscorableChampion):
        return _Comparison(champion_unavailable(champion.reason))
    y, p_old = judged.labels, champion.test
    difference = metrics.paired_auc_difference(y, judged.scores, p_old)
    report = {"version": champion.version, **difference, "champion_roc_auc": metrics.metrics(y, p_old)["roc_auc"]}
    old_decision, _ = decide(data.labels[data.split("validation")], champion.validation, y, p_old, contract)
    old_fairness = assess(contract, judged.sensitive, y, p_old, old_decision.threshold, judged.limits)
    refuse = (p_old >= old_decision.threshold).astype(int)
    new_refuse = (judged.scores >= judged.decision.threshold).astype(int)
    return _Comparison(
        noninferiority(difference, champion.version, gates),
        report,
        old_fairness,
        refuse,
        p_old,
        worsening_bounds(contract, judged.sensitive, y, new_refuse, refuse, fairness),
    )


def group_thresholds(
    data: TrainingData,
    model: Any,
    fairness: dict[str, Any],
    champion_fairness: dict[str, Any] | None,
    judged: _Judged,
    contract: Contract,
    gates: Gates,
    champion_refuse: np.ndarray | None,
) -> Mitigation:
    """The group-threshold candidate, judged on the same test window; ``verdict`` only when it could be judged."""
    allowed = [
        c for c in contract.sensitive if c.group_thresholds and fairness.get(c.name, {}).get("verdict") == "fail"
    ]
    if not allowed:
        failing = sorted(a for a, r in fairness.items() if r.get("verdict") == "fail")
        return Mitigation(
            skipped=f"no failing attribute ({', '.join(failing)}) allows group thresholds in the contract"
        )
    column = min(allowed, key=lambda c: fairness[c.name]["disparate_impact"])
    validation, test = data.split("validation"), data.split("test")
    x, frame = data.features, data.frame
    try:
        optimizer = mitigation.fit(
            model,
            x[validation],
            data.labels[validation],
            mitigation.group_labels(frame.loc[validation, column.name], column),
        )
    except mitigation.MitigationError as exc:
        return Mitigation(attribute=column.name, skipped=str(exc))
    groups = mitigation.group_labels(frame.loc[test, column.name], column)
    decided = mitigation.decide(
        optimizer, x[test], groups, gates.decision_seed, judged.scores, judged.decision.threshold
    )
    refuse, y = decided.refuse, judged.labels
    candidate = assess(contract, judged.sensitive, y, judged.scores, judged.decision.threshold, judged.limits, refuse)
    fn = int(((refuse == 0) & (y == 1)).sum())
    fp = int(((refuse == 1) & (y == 0)).sum())
    bounds = (
        worsening_bounds(contract, judged.sensitive, y, refuse, champion_refuse, candidate)
        if champion_refuse is not None
        else None
    )
    return Mitigation(
        attribute=column.name,
        method=f"fairlearn ThresholdOptimizer ({mitigation.CONSTRAINT}, {mitigation.OBJECTIVE}), fitted on the "
        f"validation split; {_unseen_groups_rule(column.name, decided.single_threshold_rows)}",
        policy=mitigation.policy(optimizer),
        fairness=candidate,
        confusion={
            "tp": int(((refuse == 1) & (y == 1)).sum()),
            "fp": fp,
            "tn": int(((refuse == 0) & (y == 0)).sum()),
            "fn": fn,
        },
        expected_cost=(fn * contract.decision.cost_false_negative + fp * contract.decision.cost_false_positive)
        / len(y),
        expected_cost_single_threshold=judged.decision.expected_cost,
        verdict=fairness_verdict(candidate, champion_fairness, gates, bounds, _waivers(contract)),
    )


def _unseen_groups_rule(attribute: str, rows: dict[str, int]) -> str:
    """How the candidate decides a group absent from the validation split, and how many test rows it did so for."""
    rule = f"the {attribute} groups absent from it are decided by the single threshold"
    if not rows:
        return rule
    return rule + f" (test rows: {', '.join(f'{group} {count:,}' for group, count in rows.items())})"


def _figures(
    judged: _Judged,
    champion_scores: np.ndarray | None,
    explained: dict[str, Any],
    fairness: dict[str, Any],
    gates: Gates,
) -> dict[str, bytes]:
    """The PNG figures logged with the version: ROC, precision-recall, calibration, cost, SHAP, fairness by group.

    ``fairness`` is the analysis of the decision rule the version deploys (single or group thresholds).
    """
    y, p = judged.labels, judged.scores
    figures = {
        "roc.png": plots.roc_curve_png(y, p, label="candidate", champion_scores=champion_scores),
        "precision_recall.png": plots.pr_curve_png(y, p, champion_scores=champion_scores, label="candidate"),
        "calibration.png": plots.calibration_png(y, p),
        "expected_cost.png": plots.threshold_cost_png(judged.thresholds, judged.costs, judged.decision.threshold),
        "shap_importance.png": plots.shap_importance_png(explained["global"]),
    }
    by_group = {
        attribute: {
            group: {
                "selection_rate": 1 - m["approval_rate"],
                "tpr": m["tpr"],
                "fpr": m["fpr"],
                "auc": m["roc_auc"],
                "count": m["rows"],
            }
            for group, m in result["groups"].items()
        }
        for attribute, result in fairness.items()
        if "disparate_impact" in result
    }
    if by_group:  # refusal rate, TPR and FPR of the refusal decision, by group
        figures["fairness_by_group.png"] = plots.fairness_png(by_group, min_group_rows=gates.min_group_rows)
    return figures
