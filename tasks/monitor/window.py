"""One window of served traffic judged against the champion's reference: quality, outcomes, performance.

A window's record is kept in the lake, one JSON object per window (:mod:`tasks.monitor.records`), so that the
alert policy (a violation in k of the last n windows, the latest included) and post-deploy verification read
history from storage, not from a process that may have restarted. Served requests are matched to labels by an
as-of join: the entity's latest application at or before the request was scored, labelled by that
application's outcome once it has been observed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from closedloop.contract import Contract, Drift
from closedloop.inference_log import FEATURE_PREFIX
from tasks.monitor import fairness_drift
from tasks.monitor.fairness_drift import FairnessDrift
from tasks.monitor.policy import Alert, MonitorPolicy, WindowStatus, for_review, violations
from tasks.monitor.report import Agreement
from tasks.monitor.verification import Verification
from tasks.shared import metrics
from tasks.shared.drift import drift_rules, expected_auc, judged_rules
from tasks.shared.fairness import FairnessLimits, assess
from tasks.shared.features import feature_names


class Span(BaseModel):
    """The window's time span, as ISO strings (how the record keeps it)."""

    start: str
    end: str


class DataQuality(BaseModel):
    """Per column, the share of rows outside the contract; ``worst_share`` the largest of them."""

    columns: dict[str, dict[str, float]]
    worst_share: float


class Performance(BaseModel):
    """Quality on the rows whose label has matured; ``no_verdict`` (with a reason) until there are enough."""

    labelled_rows: int
    reference: dict[str, Any]
    metrics: dict[str, float] | None = None
    intervals: dict[str, Any] | None = None
    calibration_gap: float | None = None
    degraded: bool = False
    verdict: str
    reason: str | None = None
    fairness: dict[str, Any] | None = None


class EstimatedPerformance(BaseModel):
    """The label-free estimate of the window's AUC against the reference's."""

    expected_auc: float | None = None
    reference_expected_auc: float | None = None
    expected_default_rate: float | None = None
    degraded: bool = False
    verdict: str
    reason: str | None = None


class Verdicts(BaseModel):
    """Everything judged on a window, and what of it breaks policy."""

    drift: dict[str, Any]
    quality: DataQuality
    performance: Performance
    estimated_performance: EstimatedPerformance
    violations: list[str]
    fairness_drift: FairnessDrift | None = None  # None: the contract has no sensitive attribute
    review: list[str] = []  # violations that ask a person and do not count toward the alert

    def fast_drift(self) -> dict[str, bool]:
        """Each judged column's drift verdict (what the Evidently report is compared with)."""
        return {c["column"]: c["drifted"] for c in self.drift["columns"]}


class WindowRecord(BaseModel):
    """A window's record, as the lake keeps it (:meth:`as_json`); the CLI, the demo and tests read these keys."""

    dataset: str
    window: Span
    champion: str
    rows: int
    status: WindowStatus
    verdicts: Verdicts | None = None
    evidently: Agreement | None = None
    verification: Verification | None = None
    alert: Alert | None = None
    event_id: str | None = None
    event_occurred: str | None = None
    fairness_event_id: str | None = None
    # SKEW: the training-serving skew verdict (tasks/monitor/skew.py) goes here once the flow computes it;
    # as_json writes it under "skew" when set
    skew: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON object of the window: verdicts at the top level, optional parts only when they exist."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "window": self.window.model_dump(),
            "champion": self.champion,
            "rows": self.rows,
            "status": self.status,
        }
        if self.verdicts is not None:
            out.update(
                drift=self.verdicts.drift,
                quality=self.verdicts.quality.model_dump(),
                performance=self.verdicts.performance.model_dump(exclude_unset=True),
                estimated_performance=self.verdicts.estimated_performance.model_dump(exclude_unset=True),
                violations=self.verdicts.violations,
            )
            if self.verdicts.fairness_drift is not None:
                out["fairness_drift"] = self.verdicts.fairness_drift.model_dump()
            if self.verdicts.review:
                out["review"] = self.verdicts.review
        if self.fairness_event_id is not None:
            out["fairness_event_id"] = self.fairness_event_id
        if self.skew is not None:
            out["skew"] = self.skew
        if self.evidently is not None:
            out["evidently"] = self.evidently.model_dump()
        if self.verification is not None:
            out["verification"] = self.verification.as_record()
        if self.alert is not None:
            out["alert"] = self.alert.as_record()
            if self.alert.alert:
                out.update(event_id=self.event_id, event_occurred=self.event_occurred)
        return out


@dataclass(frozen=True)
class OutcomeTables:
    """What labels a window: the applications, their observed outcomes, the tables of sensitive attributes."""

    applications: pd.DataFrame
    outcomes: pd.DataFrame
    sensitive: dict[str, pd.DataFrame] = field(default_factory=dict)


def served(frame: pd.DataFrame) -> pd.DataFrame:
    """The answers that were returned (champion and canary), features as served without their prefix."""
    if frame.empty:
        return frame
    answered = frame[frame["variant"] != "shadow"]
    return answered.rename(columns=lambda c: c[len(FEATURE_PREFIX) :] if c.startswith(FEATURE_PREFIX) else c)


def _column_problems(contract: Contract, name: str, values: pd.Series) -> dict[str, float]:
    """Shares of one column's rows outside the contract: missing where not nullable, out of range, unseen."""
    column = contract.column(name)
    found: dict[str, float] = {}
    missing = float(values.isna().mean())
    if missing and not column.nullable and column.source == contract.prediction:
        found["missing"] = missing
    if column.categories:
        unseen = values.notna() & ~values.astype(str).isin([str(c) for c in column.categories])
        if unseen.any():
            found["unseen_category"] = float(unseen.mean())
    elif column.min is not None or column.max is not None:
        x = pd.to_numeric(values, errors="coerce")
        out = (x < column.min if column.min is not None else False) | (
            x > column.max if column.max is not None else False
        )
        if np.any(out):
            found["out_of_range"] = float(np.mean(out))
    return found


def data_quality(contract: Contract, window: pd.DataFrame, features: list[str]) -> DataQuality:
    """Rows outside the contract per column: missing where not nullable, out of range, unseen categories."""
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    problems: dict[str, dict[str, float]] = {}
    for name in features:
        if name not in window or name in aggregates or len(window) == 0:
            continue
        found = _column_problems(contract, name, window[name])
        if found:
            problems[name] = found
    worst = max((v for p in problems.values() for v in p.values()), default=0.0)
    return DataQuality(columns=problems, worst_share=worst)


def _as_of(frame: pd.DataFrame, key: str, time: str) -> pd.DataFrame:
    """``frame`` with the as-of join's key and time columns, sorted by time."""
    frame = frame.copy()
    frame["_key"] = frame[key].astype(str)
    frame["_at"] = pd.to_datetime(frame[time], utc=True).astype("datetime64[ns, UTC]")
    return frame.sort_values("_at", kind="stable")


def attach_outcomes(contract: Contract, window: pd.DataFrame, tables: OutcomeTables, now: datetime) -> pd.DataFrame:
    """Each served row with its application's label (NaN until observed by ``now``) and sensitive attributes."""
    key = contract.entity.join_key
    spec = contract.tables[contract.prediction]
    label, label_spec = contract.label, contract.tables[contract.label.source]
    app_keys = [k for k in label_spec.primary_key if k != label_spec.event_time]
    rows = _as_of(window[["request_id", "entity_id", "scored_at", "score", "decision"]], "entity_id", "scored_at")
    apps, outcomes = tables.applications, tables.outcomes
    if apps.empty:
        rows[label.column] = np.nan
        return rows
    if not outcomes.empty:
        matured = outcomes[outcomes[label_spec.event_time] <= now][[*app_keys, label.column]]
        apps = apps.merge(matured, on=app_keys, how="left")
    else:
        apps = apps.assign(**{label.column: np.nan})
    apps = _as_of(apps, key, spec.event_time)[["_key", "_at", label.column]]
    out = pd.merge_asof(rows, apps, on="_at", by="_key", direction="backward")
    for source, table in tables.sensitive.items():
        if table.empty:
            continue
        names = [c.name for c in contract.columns if c.sensitive and c.source == source]
        attributes = _as_of(table, key, contract.tables[source].event_time)[["_key", "_at", *names]]
        out = pd.merge_asof(
            out.sort_values("_at", kind="stable"), attributes, on="_at", by="_key", direction="backward"
        )
    return out


def labelled(contract: Contract, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Which rows have a matured label, and those rows' outcomes as 0/1 (1 = the contract's positive class)."""
    known = rows[contract.label.column].notna().to_numpy()
    y = (rows.loc[known, contract.label.column] == contract.label.positive).to_numpy(dtype=int)
    return known, y


def _fairness(contract: Contract, known: pd.DataFrame, y: np.ndarray, p: np.ndarray) -> dict[str, Any] | None:
    """The fairness assessment of the labelled rows when the window carries sensitive attributes."""
    sensitive = [c.name for c in contract.columns if c.sensitive and c.name in known]
    if not sensitive:
        return None
    decisions = (known["decision"] == "refuse").to_numpy(dtype=int)
    try:
        return assess(contract, known[sensitive], y, p, 0.5, FairnessLimits(), decisions=decisions)
    except ValueError as exc:  # one group only in this window: reported, not judged
        return {"skipped": str(exc)}


def performance(contract: Contract, rows: pd.DataFrame, profile: dict[str, Any], policy: MonitorPolicy) -> Performance:
    """Quality on the rows whose label has matured, against the reference's test figures; else a skip reason."""
    mask, y = labelled(contract, rows)
    known = rows[mask]
    p = known["score"].to_numpy(dtype="float64")
    reference = profile.get("test_metrics", {})
    if len(known) < policy.min_labelled or y.sum() == 0 or y.sum() == len(y):
        return Performance(
            labelled_rows=len(known),
            reference=reference,
            verdict="no_verdict",
            reason=(
                f"{len(known)} labelled rows with {int(y.sum())} defaults; "
                f"need {policy.min_labelled} rows and both classes"
            ),
        )
    measured = metrics.metrics(y, p)
    reference_auc = reference.get("roc_auc")
    degraded = bool(reference_auc is not None and measured["roc_auc"] < reference_auc - policy.auc_tolerance)
    judged = Performance(
        labelled_rows=len(known),
        reference=reference,
        metrics=measured,
        intervals=metrics.bootstrap_intervals(y, p, rounds=100),
        calibration_gap=float(p.mean() - y.mean()),
        degraded=degraded,
        verdict="degraded" if degraded else "ok",
    )
    fairness = _fairness(contract, known, y, p)
    return judged if fairness is None else judged.model_copy(update={"fairness": fairness})


def estimated_performance(scores: np.ndarray, profile: dict[str, Any], policy: MonitorPolicy) -> EstimatedPerformance:
    """Label-free estimate (CBPE-style: the calibrated score is the probability of default) before labels mature."""
    if len(scores) == 0:
        return EstimatedPerformance(verdict="no_verdict", reason="no scores")
    estimate = expected_auc(scores)
    reference_estimate = profile.get("expected_auc")
    degraded = bool(reference_estimate is not None and estimate < reference_estimate - policy.expected_auc_tolerance)
    return EstimatedPerformance(
        expected_auc=estimate,
        reference_expected_auc=reference_estimate,
        expected_default_rate=float(np.mean(scores)),
        degraded=degraded,
        verdict="degraded" if degraded else "ok",
    )


def verdicts(
    contract: Contract,
    frame: pd.DataFrame,
    rows: pd.DataFrame,
    profile: dict[str, Any],
    drift: dict[str, Any],
    policy: MonitorPolicy,
    evidence: dict[str, Any] | None = None,
) -> Verdicts:
    """Quality, performance (labelled and estimated), fairness drift and the violations of a window.

    ``evidence``: the champion's evidence record, whose fairness analysis the served decisions are compared with.
    """
    quality = data_quality(contract, frame, feature_names(contract))
    judged = performance(contract, rows, profile, policy)
    estimate = estimated_performance(frame["score"].to_numpy(dtype="float64"), profile, policy)
    fairness = fairness_drift.judge(contract, rows, evidence) if contract.sensitive else None
    found = violations(
        drift, quality.worst_share, judged.degraded, estimate.degraded, policy, bool(fairness and fairness.drifted)
    )
    return Verdicts(
        drift=drift,
        quality=quality,
        performance=judged,
        estimated_performance=estimate,
        violations=found,
        fairness_drift=fairness,
        review=for_review(found, contract.monitoring.fairness_drift_action),
    )


@dataclass(frozen=True)
class DriftChunk:
    """The columns one mapped task judges: their reference profiles and drift rules."""

    references: dict[str, Any]
    rules: dict[str, Drift]


def drift_chunks(profile: dict[str, Any], columns: list[str], contract: Contract, chunks: int) -> list[DriftChunk]:
    """The window's judged columns split into at most ``chunks`` parts, in the contract's order."""
    present = pd.DataFrame(columns=columns)
    rules = judged_rules(profile, present, drift_rules(contract, feature_names(contract)))
    if not rules:
        return []
    parts = [list(p) for p in np.array_split(np.array(list(rules), dtype=object), min(chunks, len(rules))) if len(p)]
    return [DriftChunk({n: profile["columns"][n] for n in part}, {n: rules[n] for n in part}) for part in parts]


def labelled_requests(frame: pd.DataFrame, rows: pd.DataFrame, known: np.ndarray) -> pd.DataFrame:
    """The served rows (features and score) of the requests whose label has matured, in ``rows``' order."""
    return frame.set_index("request_id").loc[rows.loc[known, "request_id"]].reset_index()
