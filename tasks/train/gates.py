"""The promotion gates: feature coverage, quality floor, non-inferiority to the champion, fairness, behaviour.

Every one fails closed. Each function turns what the evaluation measured into a :class:`GateVerdict`; a version is
eligible for promotion only when every gate passed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from closedloop.contract import Contract, FairnessPolicy
from tasks.train.coverage import FeatureCoverage
from tasks.train.evidence import FairnessRecord, GateVerdict, LimitsRecord, Mitigation


class Gates(BaseModel):
    """Promotion thresholds; every gate fails closed."""

    min_roc_auc: float = Field(default=0.65, description="absolute floor on the test window")
    min_test_rows: int = Field(default=200, description="fewer test rows: the gate cannot decide")
    min_test_positives: int = Field(default=20)
    noninferiority_margin: float = Field(
        default=0.01, description="lower bound of AUC(new)-AUC(champion) above -margin"
    )
    max_demographic_parity_difference: float = 0.15
    max_equalized_odds_difference: float = 0.15
    min_disparate_impact: float = 0.8
    min_group_rows: int = 50
    min_group_outcomes: int = Field(default=30, description="defaults and repayments for a group's TPR/FPR to count")
    max_fairness_worsening: float = Field(
        default=0.02, description="vs the champion, per disparity measure, and beyond bootstrap noise"
    )
    mitigation: Literal["threshold_optimizer", "none"] = Field(
        default="threshold_optimizer",
        description="when the fairness gate fails: try group thresholds on an attribute the contract allows",
    )
    decision_seed: int = Field(default=7, description="seed of the group-threshold candidate's randomised mix")


def effective_gates(
    contract: Contract, gates: Gates, overrides: FairnessPolicy | None = None
) -> tuple[Gates, FairnessRecord]:
    """The gates with the fairness limits that apply: an override (CLI or UI) over the contract's, over ``gates``.

    Returns the gates and the record kept with the version: each limit's value and where it came from
    ("override", "contract" or "default": the run's gates).
    """
    overrides = overrides or FairnessPolicy()
    limits: dict[str, float | int | str] = {}
    sources: dict[str, str] = {}
    for name in FairnessPolicy.model_fields:
        for source, value in (
            ("override", getattr(overrides, name)),
            ("contract", getattr(contract.fairness, name)),
            ("default", getattr(gates, name)),
        ):
            if value is not None:
                limits[name], sources[name] = value, source
                break
    record = FairnessRecord(limits=limits, source=sources, override="override" in sources.values())
    return gates.model_copy(update=limits), record


# which way each limit moves to let more versions through: +1 a larger value, -1 a smaller one
LOOSER: dict[str, int] = {
    "min_roc_auc": -1,
    "min_test_rows": -1,
    "min_test_positives": -1,
    "noninferiority_margin": +1,
    "max_demographic_parity_difference": +1,
    "max_equalized_odds_difference": +1,
    "min_disparate_impact": -1,
    "min_group_rows": +1,  # a larger minimum leaves more small groups out of the comparison
    "min_group_outcomes": +1,
    "max_fairness_worsening": +1,
}


def limits_record(contract: Contract, applied: Gates, guards: dict[str, Any] | None = None) -> LimitsRecord:
    """The limits ``applied`` against the contract's own (its fairness limits over the defaults).

    A limit is loosened when it lets through a version the contract's value would refuse. Mitigation and the
    decision seed are choices, not limits, and never count as loosened.
    """
    reference, _ = effective_gates(contract, Gates())
    values = {name: getattr(applied, name) for name in LOOSER}
    contract_values = {name: getattr(reference, name) for name in LOOSER}
    loosened = [name for name, way in LOOSER.items() if (values[name] - contract_values[name]) * way > 1e-12]
    return LimitsRecord(values=values, contract=contract_values, loosened=loosened, guards=guards)


def undecidable_quality(test_rows: int, test_positives: int, gates: Gates) -> GateVerdict | None:
    """The quality gate blocked when the test window is too small or one-sided to judge; None when it can decide."""
    if test_rows >= gates.min_test_rows and test_positives >= gates.min_test_positives and test_positives < test_rows:
        return None
    return GateVerdict(
        verdict="blocked",
        reason=(
            f"cannot decide on {test_rows} test rows with {test_positives} positives "
            f"(need {gates.min_test_rows} rows and {gates.min_test_positives} positives of each class)"
        ),
    )


def feature_coverage(coverage: FeatureCoverage, minimum: float) -> GateVerdict:
    """Every feature table's rows at their time for at least ``minimum`` of the matured applications.

    The applications without them were left out of the training set; when too many were, the model and its test
    window describe another population than the one it will score.
    """
    if coverage.rows == 0:
        return GateVerdict(verdict="blocked", reason="no matured application was retrieved: coverage cannot be judged")
    floor = f"{minimum * 100:g}%"
    short = [table for table, share in coverage.coverage.items() if not share >= minimum]  # NaN fails too
    if short:
        tables = "; ".join(
            f"{table}: rows at their time for {coverage.rows - coverage.missing[table]:,} of {coverage.rows:,} "
            f"applications ({coverage.coverage[table]:.2%}), below {floor}"
            for table in short
        )
        return GateVerdict(verdict="fail", reason=f"{tables}; {coverage.left_out:,} left out of the training set")
    if not coverage.coverage:
        return GateVerdict(verdict="pass", reason="no stored feature table: every input arrives with the application")
    shares = ", ".join(f"{table} {share:.2%}" for table, share in coverage.coverage.items())
    return GateVerdict(
        verdict="pass",
        reason=f"every feature table at or above {floor}: {shares}; {coverage.left_out:,} left out of the training set",
    )


def quality_floor(roc_auc: float, gates: Gates) -> GateVerdict:
    """The absolute floor on the test window's ROC-AUC."""
    return GateVerdict(
        verdict="pass" if roc_auc >= gates.min_roc_auc else "fail",
        reason=f"ROC-AUC {roc_auc:.4f} vs floor {gates.min_roc_auc}",
    )


def behaviour_verdict(report: dict[str, Any]) -> GateVerdict:
    """The behavioural tests (directional, invariance, minimum functionality) as a gate.

    Its reason names the failures, or the checks that ran and on what, and those that did not run.
    """
    return GateVerdict(verdict=report["verdict"], reason="; ".join(report["failures"]) or _checks_that_ran(report))


def _checks_that_ran(report: dict[str, Any]) -> str:
    ran, not_run = [], []
    directional = list(report.get("directional", {}))
    if directional:
        ran.append(f"directional ({', '.join(directional)})")
    else:
        not_run.append("directional")
    invariance = report.get("invariance", {})
    measured = [a for a, r in invariance.items() if "max_change" in r]
    inputs_not = [a for a, r in invariance.items() if "max_change" not in r]
    if measured:
        ran.append(f"invariance ({', '.join(measured)})")
    if inputs_not:
        ran.append(f"invariance by construction ({', '.join(inputs_not)}: not model inputs)")
    if report.get("minimum_functionality", {}).get("verdict") in ("pass", "fail"):
        ran.append("minimum functionality")
    else:
        not_run.append("minimum functionality")
    reason = "; ".join(ran) or "no check ran"
    return reason + (f"; not run: {', '.join(not_run)} (the contract declares no risk direction)" if not_run else "")


def no_champion() -> GateVerdict:
    """The first model of a dataset: nothing to compare with, the absolute floors decide."""
    return GateVerdict(verdict="pass", reason="no champion yet: absolute floors only")


def champion_unavailable(reason: str) -> GateVerdict:
    """A champion exists but cannot be scored: the comparison cannot be made, so the gate blocks."""
    return GateVerdict(verdict="blocked", reason=reason)


def noninferiority(difference: dict[str, float], champion: str, gates: Gates) -> GateVerdict:
    """Not worse than the champion: the paired bootstrap's lower bound of AUC(new) - AUC(champion) above -margin."""
    return GateVerdict(
        verdict="pass" if difference["lower"] > -gates.noninferiority_margin else "fail",
        compared_with=champion,
        reason=(
            f"AUC difference {difference['difference']:+.4f}, 95% lower bound {difference['lower']:+.4f} vs margin "
            f"-{gates.noninferiority_margin}"
        ),
    )


def fairness_verdict(
    new: dict[str, Any],
    old: dict[str, Any] | None,
    gates: Gates,
    bounds: dict[tuple[str, str], float] | None = None,
    waivers: dict[str, str] | None = None,
) -> GateVerdict:
    """Absolute limits on the point estimates; "worse than the champion" needs practical and statistical evidence.

    Worse means: the disparity exceeds the champion's by more than ``max_fairness_worsening`` AND the paired
    bootstrap's one-sided 95% lower bound of the difference is above zero (``bounds``); without bounds, the point
    estimates alone decide. An attribute that could not be judged fails the gate, unless the contract waives it
    with a reason (``waivers``: attribute -> reason, from ``Column.fairness_waiver``): not judged is never a pass.
    """
    problems, waived = [], []
    for attribute, result in new.items():
        if result.get("verdict") == "fail":
            problems.append(f"{attribute}: {', '.join(result['failures'])}")
        elif result.get("verdict") not in ("pass", "fail"):
            why = result.get("reason", "not judged")
            if attribute in (waivers or {}):
                waived.append(f"{attribute} ({why}; waived: {(waivers or {})[attribute]})")
            else:
                problems.append(f"{attribute}: not judged ({why}); judge it, or waive it in the contract with a reason")
        if (
            old
            and result.get("verdict") in ("pass", "fail")
            and old.get(attribute, {}).get("verdict") in ("pass", "fail")
        ):
            for measure in ("demographic_parity_difference", "equalized_odds_difference"):
                if not result[measure] > old[attribute][measure] + gates.max_fairness_worsening:
                    continue
                lower = (bounds or {}).get((attribute, measure))
                if lower is None or lower > 0:
                    evidence = f", 95% lower bound of the increase {lower:+.3f}" if lower is not None else ""
                    problems.append(f"{attribute}: {measure} worse than the champion's{evidence}")
    reason = "; ".join(problems) or "within limits"
    if waived:
        reason += f" (not judged, waived: {'; '.join(waived)})"
    return GateVerdict(verdict="fail" if problems else "pass", reason=reason)


def mitigated_fairness(single_threshold: GateVerdict, candidate: Mitigation) -> GateVerdict:
    """The fairness gate once the group-threshold candidate was judged: that candidate's verdict decides."""
    if candidate.verdict is None:  # not tried or not judged: the single threshold's verdict stands
        return single_threshold
    return GateVerdict(
        verdict=candidate.verdict.verdict,
        reason=f"with group thresholds on {candidate.attribute}: {candidate.verdict.reason} "
        f"(single threshold: {single_threshold.reason})",
        mitigation=f"threshold_optimizer:{candidate.attribute}",
    )


def eligible(verdicts: dict[str, GateVerdict]) -> bool:
    """Eligible for promotion: every gate passed (no gate at all decides nothing, so it is not eligible)."""
    return bool(verdicts) and all(v.verdict == "pass" for v in verdicts.values())
