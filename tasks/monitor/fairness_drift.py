"""Fairness drift: the served decisions' fairness per sensitive attribute, against the version's evidence and limits.

The sensitive attributes of the served entities come from the offline store (as-of joined to each request by
:func:`tasks.monitor.window.attach_outcomes`): the scoring service never receives or logs them. For each attribute
the window's approval rate by group is compared with the one the version's evidence recorded on its test window,
and the served disparities with the contract's fairness limits; once labels have matured, the TPR and FPR gaps too.

A group's drift is the change of its approval rate *relative to the attribute's* (group rate minus the rate of
all judged groups): a shift that moves every group alike (a downturn, inflated incomes) is the drift monitor's
business; one that moves one group against the others is this one's. Groups below ``min_group_rows`` served rows
(or, for TPR/FPR, ``min_group_outcomes`` defaults and repayments) are reported, not judged.

Pure: frames in, typed verdicts out; each attribute's rates are ``np.bincount`` sums over integer group codes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from closedloop.contract import Column, Contract
from tasks.shared.fairness import FairnessLimits

EVENT_GROUPS = 10  # drifted groups named per attribute in the event's payload: it stays small
NOISE_Z = 2.0  # a change counts past max_fairness_drift only beyond this many standard errors of the window's rate


class GroupRates(BaseModel):
    """One group's served rates and, when the evidence has it, the approval rate it had at training."""

    rows: int
    approval_rate: float
    trained_approval_rate: float | None = None
    gap_change: float | None = None  # change of (group - attribute) approval rate since training
    noise: float | None = None  # NOISE_Z standard errors of the served approval rate: the change must exceed both
    labelled_rows: int = 0
    tpr: float | None = None  # refusals among the labelled defaults (the evidence's TPR)
    fpr: float | None = None  # refusals among the labelled repayments
    drifted: bool = False


class AttributeDrift(BaseModel):
    """One sensitive attribute judged on the window: its groups, disparities, and what breaches a limit."""

    verdict: Literal["ok", "drifted", "no_verdict"]
    reason: str | None = None
    rows: int = 0  # served rows whose attribute the offline store knows
    groups: dict[str, GroupRates] = Field(default_factory=dict)
    small_groups: dict[str, int] = Field(default_factory=dict)
    demographic_parity_difference: float | None = None
    disparate_impact: float | None = None
    tpr_gap: float | None = None  # labelled rows, groups with enough defaults and repayments
    fpr_gap: float | None = None
    trained: dict[str, float | None] = Field(default_factory=dict)  # the evidence's measures, for the record
    drifted_groups: list[str] = Field(default_factory=list)
    breaches: list[str] = Field(default_factory=list)


class FairnessDrift(BaseModel):
    """The window's fairness verdict: per attribute, and the attributes that drifted."""

    action: Literal["retrain", "review"]
    max_fairness_drift: float
    limits: dict[str, float | int]
    attributes: dict[str, AttributeDrift]
    drifted: list[str]

    def event_payload(self) -> dict[str, Any]:
        """What the fairness event says: the drifted attributes, their groups and breaches (small, no rows)."""
        return {
            "action": self.action,
            "attributes": {
                name: {
                    "groups": self.attributes[name].drifted_groups[:EVENT_GROUPS],
                    "breaches": self.attributes[name].breaches[:EVENT_GROUPS],
                }
                for name in self.drifted
            },
        }


def limits_of(contract: Contract) -> FairnessLimits:
    """The contract's fairness limits, each left out keeping the training gates' default."""
    known = {f.name for f in fields(FairnessLimits)}
    given = contract.fairness.model_dump(exclude_none=True)
    return FairnessLimits(**{name: value for name, value in given.items() if name in known})


def trained_fairness(evidence: dict[str, Any] | None) -> dict[str, Any]:
    """The fairness analysis of the decision rule the version deploys: its group thresholds' when it has them."""
    if not evidence:
        return {}
    report = evidence.get("report") or {}
    if (evidence.get("gates") or {}).get("fairness", {}).get("mitigation"):
        mitigated = (report.get("mitigation") or {}).get("fairness")
        if mitigated:
            return dict(mitigated)
    return dict(report.get("fairness") or {})


def group_codes(values: pd.Series, column: Column) -> tuple[np.ndarray, list[str]]:
    """Integer group codes (-1: unknown) and the groups' names as the evidence keys them (see ``groups_of``)."""
    if column.bands:
        edges = np.asarray(column.bands, dtype="float64")
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        codes = np.searchsorted(edges, x, side="right") - 1  # bins [e_i, e_i+1), like pd.cut(right=False)
        codes[~np.isfinite(x) | (codes < 0) | (codes >= len(edges) - 1)] = -1
        return codes.astype(np.int64), [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


@dataclass(frozen=True)
class _Outcomes:
    """A window's per-row arrays shared by every attribute: decisions and matured labels."""

    approve: np.ndarray  # float 0/1
    positive: np.ndarray  # bool: labelled default
    negative: np.ndarray  # bool: labelled repayment


def _outcomes(contract: Contract, rows: pd.DataFrame) -> _Outcomes:
    approve = (rows["decision"].to_numpy() == "approve").astype("float64")
    label = rows[contract.label.column] if contract.label.column in rows else pd.Series(np.nan, index=rows.index)
    known = label.notna().to_numpy()
    positive = known & (label == contract.label.positive).to_numpy()
    return _Outcomes(approve=approve, positive=positive, negative=known & ~positive)


def _rates(
    codes: np.ndarray, k: int, among: np.ndarray, numerator: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: rows ``among``, the sum of ``numerator`` over them, and its share (NaN where a group has none)."""
    chosen = codes[among]
    counts = np.bincount(chosen, minlength=k)
    hits = np.bincount(chosen, weights=numerator[among], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts, hits, hits / counts


def _noise(rate: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """NOISE_Z binomial standard errors of rates measured on ``rows`` rows each.

    The rate is taken as (hits + 1) / (rows + 2): a group approved or refused to the last applicant still has
    an error (a plain binomial one would be zero).
    """
    n = np.maximum(rows, 1).astype("float64")
    shrunk = (np.nan_to_num(rate) * n + 1) / (n + 2)
    return np.asarray(NOISE_Z * np.sqrt(shrunk * (1 - shrunk) / n), dtype="float64")


def _gap(rates: np.ndarray, rows: np.ndarray) -> tuple[float | None, float]:
    """The gap between the highest and the lowest of ``rates`` and its noise (the two rates' errors combined)."""
    if len(rates) < 2:
        return None, 0.0
    high, low = int(np.argmax(rates)), int(np.argmin(rates))
    noise = float(np.hypot(*_noise(rates[[high, low]], rows[[high, low]])))
    return float(rates[high] - rates[low]), noise


def _trained_gap(trained: dict[str, Any], rate: str) -> float | None:
    """The evidence's gap of ``rate`` between the groups it judged equalized odds on."""
    groups = trained.get("groups") or {}
    values = [groups[g][rate] for g in trained.get("equalized_odds_groups", []) if g in groups]
    values = [v for v in values if v is not None and v == v]
    return float(max(values) - min(values)) if len(values) >= 2 else None


def _approval_drift(
    judged: list[int], names: list[str], counts: np.ndarray, approvals: np.ndarray, trained: dict[str, Any]
) -> dict[str, tuple[float, float]]:
    """Per group judged here and at training: (trained approval rate, change of its gap to the attribute's rate)."""
    groups = trained.get("groups") or {}
    common = [g for g in judged if names[g] in groups and groups[names[g]].get("rows")]
    if len(common) < 2:
        return {}
    trained_rate = np.array([groups[names[g]]["approval_rate"] for g in common], dtype="float64")
    trained_rows = np.array([groups[names[g]]["rows"] for g in common], dtype="float64")
    trained_overall = float(trained_rate @ trained_rows / trained_rows.sum())
    served_overall = float(approvals[common].sum() / counts[common].sum())
    served_rate = approvals[common] / counts[common]
    change = (served_rate - served_overall) - (trained_rate - trained_overall)
    return {names[g]: (float(trained_rate[i]), float(change[i])) for i, g in enumerate(common)}


@dataclass(frozen=True)
class _Counts:
    """One attribute's per-group sums: served rows and approvals; labelled defaults, repayments and their refusals."""

    rows: np.ndarray
    approvals: np.ndarray
    approval: np.ndarray
    positives: np.ndarray
    tpr: np.ndarray
    negatives: np.ndarray
    fpr: np.ndarray


def _count(codes: np.ndarray, k: int, outcomes: _Outcomes) -> _Counts:
    """The per-group sums of an attribute's ``k`` groups: five ``np.bincount`` passes over the window."""
    known = codes >= 0
    refuse = 1.0 - outcomes.approve
    rows, approvals, approval = _rates(codes, k, known, outcomes.approve)
    positives, _, tpr = _rates(codes, k, known & outcomes.positive, refuse)
    negatives, _, fpr = _rates(codes, k, known & outcomes.negative, refuse)
    return _Counts(rows, approvals, approval, positives, tpr, negatives, fpr)


def _groups(
    judged: list[int], names: list[str], counted: list[int], sums: _Counts, trained: dict[str, Any], max_drift: float
) -> dict[str, GroupRates]:
    """Each judged group's rates, its change against the attribute's since training, and whether it drifted."""
    moved = _approval_drift(judged, names, sums.rows, sums.approvals, trained)
    noise = _noise(sums.approval, sums.rows)
    out = {}
    for g in judged:
        then, change = moved.get(names[g], (None, None))
        out[names[g]] = GroupRates(
            rows=int(sums.rows[g]),
            approval_rate=float(sums.approval[g]),
            trained_approval_rate=then,
            gap_change=change,
            noise=float(noise[g]),
            labelled_rows=int(sums.positives[g] + sums.negatives[g]),
            tpr=float(sums.tpr[g]) if g in counted else None,
            fpr=float(sums.fpr[g]) if g in counted else None,
            drifted=change is not None and abs(change) > max_drift + noise[g],
        )
    return out


def judge_attribute(
    codes: np.ndarray,
    names: list[str],
    outcomes: _Outcomes,
    trained: dict[str, Any],
    limits: FairnessLimits,
    max_drift: float,
) -> AttributeDrift:
    """One attribute: served rates by group against the evidence (``max_drift``) and the limits."""
    sums = _count(codes, len(names), outcomes)
    known = int(sums.rows.sum())
    judged = [g for g in range(len(names)) if sums.rows[g] >= limits.min_group_rows]
    small = {names[g]: int(n) for g, n in enumerate(sums.rows) if 0 < n < limits.min_group_rows}
    if len(judged) < 2:
        reason = f"fewer than two groups with at least {limits.min_group_rows} served rows"
        return AttributeDrift(verdict="no_verdict", rows=known, small_groups=small, reason=reason)
    rates = sums.approval[judged]
    dp = float(rates.max() - rates.min())
    di = float(rates.min() / rates.max()) if rates.max() > 0 else None  # nobody approved: no ratio, no pass
    counted = [g for g in judged if min(sums.positives[g], sums.negatives[g]) >= limits.min_group_outcomes]
    tpr_gap, tpr_noise = _gap(sums.tpr[counted], sums.positives[counted])
    fpr_gap, fpr_noise = _gap(sums.fpr[counted], sums.negatives[counted])
    groups = _groups(judged, names, counted, sums, trained, max_drift)
    trained_gaps = {"tpr_gap": _trained_gap(trained, "tpr"), "fpr_gap": _trained_gap(trained, "fpr")}
    breaches = [
        f"approval rate of {name} moved {rates_.gap_change:+.3f} against the attribute's since training "
        f"({rates_.trained_approval_rate:.3f} -> {rates_.approval_rate:.3f}; at most {max_drift:g} + noise "
        f"{rates_.noise:.3f})"
        for name, rates_ in groups.items()
        if rates_.drifted
    ]
    breaches += _limit_breaches(dp, di, tpr_gap, fpr_gap, limits)
    breaches += _gap_breaches(
        {"tpr_gap": (tpr_gap, tpr_noise), "fpr_gap": (fpr_gap, fpr_noise)}, trained_gaps, max_drift
    )
    return AttributeDrift(
        verdict="drifted" if breaches else "ok",
        reason=None if trained.get("groups") else "no judged groups in the version's evidence: limits only",
        rows=known,
        groups=groups,
        small_groups=small,
        demographic_parity_difference=dp,
        disparate_impact=di,
        tpr_gap=tpr_gap,
        fpr_gap=fpr_gap,
        trained={
            "demographic_parity_difference": trained.get("demographic_parity_difference"),
            "disparate_impact": trained.get("disparate_impact"),
            **trained_gaps,
        },
        drifted_groups=[name for name, rates_ in groups.items() if rates_.drifted],
        breaches=breaches,
    )


def _limit_breaches(
    dp: float, di: float | None, tpr_gap: float | None, fpr_gap: float | None, limits: FairnessLimits
) -> list[str]:
    """The contract's limits the served decisions break, named as the evidence names its measures."""
    found = []
    if dp > limits.max_demographic_parity_difference:
        found.append(f"demographic parity difference {dp:.3f} above {limits.max_demographic_parity_difference:g}")
    if di is None:
        found.append("disparate impact undefined: no group's applicants were approved")
    elif di < limits.min_disparate_impact:
        found.append(f"disparate impact {di:.3f} below {limits.min_disparate_impact:g} (four-fifths rule)")
    odds = max((g for g in (tpr_gap, fpr_gap) if g is not None), default=None)
    if odds is not None and odds > limits.max_equalized_odds_difference:
        found.append(f"equalized odds difference {odds:.3f} above {limits.max_equalized_odds_difference:g}")
    return found


def _gap_breaches(
    served: dict[str, tuple[float | None, float]], trained: dict[str, float | None], max_drift: float
) -> list[str]:
    """Error-rate gaps that widened by more than ``max_drift`` and their noise since training (narrower: no breach)."""
    found = []
    for name, (gap, noise) in served.items():
        before = trained.get(name)
        if gap is not None and before is not None and gap - before > max_drift + noise:
            label = name.replace("_gap", "").upper()
            found.append(
                f"{label} gap {gap:.3f} widened from {before:.3f} since training "
                f"(at most +{max_drift:g} + noise {noise:.3f})"
            )
    return found


def judge(contract: Contract, rows: pd.DataFrame, evidence: dict[str, Any] | None) -> FairnessDrift:
    """Every sensitive attribute of the window's served ``rows`` (decision, label, attributes as-of joined)."""
    limits, monitoring = limits_of(contract), contract.monitoring
    trained = trained_fairness(evidence)
    outcomes = _outcomes(contract, rows)
    attributes: dict[str, AttributeDrift] = {}
    for column in contract.sensitive:
        if column.name not in rows:
            attributes[column.name] = AttributeDrift(
                verdict="no_verdict", reason="the offline store has no row of this attribute for the served entities"
            )
            continue
        codes, names = group_codes(rows[column.name], column)
        judged_then = trained.get(column.name) or {}
        if judged_then.get("verdict") not in ("pass", "fail"):
            judged_then = {}  # skipped at training: its "groups" are row counts, nothing to compare with
        attributes[column.name] = judge_attribute(
            codes, names, outcomes, judged_then, limits, monitoring.max_fairness_drift
        )
    return FairnessDrift(
        action=monitoring.fairness_drift_action,
        max_fairness_drift=monitoring.max_fairness_drift,
        limits={
            "max_demographic_parity_difference": limits.max_demographic_parity_difference,
            "max_equalized_odds_difference": limits.max_equalized_odds_difference,
            "min_disparate_impact": limits.min_disparate_impact,
            "min_group_rows": limits.min_group_rows,
            "min_group_outcomes": limits.min_group_outcomes,
        },
        attributes=attributes,
        drifted=[name for name, verdict in attributes.items() if verdict.verdict == "drifted"],
    )
