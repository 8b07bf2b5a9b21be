"""The alert policy: what in a window is a violation, when violations become an alert, and how severe it is.

A window's record (see :mod:`tasks.monitor.window`) lists its violations; the alert reads the records of the
windows before it, so a single noisy window never raises one (hysteresis: k violated of the last n judged).
Violations the record also lists under ``review`` (a fairness drift the contract sends to a person) are kept and
reported but never count toward the alert that starts a retrain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

WindowStatus = Literal["no_champion", "no_data", "too_few_rows", "judged"]

HIGH_DRIFT_SHARE = 0.3  # this share of the features drifted makes an alert high-severity


class MonitorPolicy(BaseModel):
    """What counts as a violation and when it becomes an alert."""

    min_rows: int = Field(default=200, ge=1, description="fewer served rows than this: no verdict (too noisy)")
    drift_share: float = Field(default=0.0, ge=0, le=1, description="a violation needs more than this share drifted")
    alert_k: int = Field(default=2, ge=1, description="alert when k of the last n windows (the latest one included)")
    alert_n: int = Field(default=3, ge=1, description="... violated")
    min_labelled: int = Field(default=200, ge=10, description="labelled rows needed to judge performance")
    auc_tolerance: float = Field(default=0.03, ge=0, description="AUC drop below the reference test AUC tolerated")
    expected_auc_tolerance: float = Field(default=0.05, ge=0, description="label-free estimate's drop tolerated")
    max_quality_share: float = Field(default=0.01, ge=0, le=1, description="rows out of the contract tolerated")

    def model_post_init(self, _: Any) -> None:
        if self.alert_k > self.alert_n:
            raise ValueError(f"alert_k ({self.alert_k}) cannot exceed alert_n ({self.alert_n})")


class Alert(BaseModel):
    """The alert decision after a window; kept in the window's record under ``alert``."""

    alert: bool
    violated_windows: int | None = None
    judged_windows: int | None = None
    k: int | None = None
    n: int | None = None
    reason: str

    def as_record(self) -> dict[str, Any]:
        """The ``alert`` entry of the window's JSON record (only the fields the decision used)."""
        return self.model_dump(exclude_unset=True)


def status_of(rows: int, policy: MonitorPolicy) -> WindowStatus:
    """Whether a window of ``rows`` served rows is judged, or why not."""
    if rows == 0:
        return "no_data"
    return "too_few_rows" if rows < policy.min_rows else "judged"


def violations(
    drift: Mapping[str, Any],
    quality_share: float,
    performance_degraded: bool,
    estimate_degraded: bool,
    policy: MonitorPolicy,
    fairness_drifted: bool = False,
) -> list[str]:
    """What in a window breaks policy: drift (features or score), data quality, performance, fairness."""
    found = []
    if drift.get("drifted") and drift.get("share", 0) > policy.drift_share:
        found.append("feature_drift")
    if (drift.get("score") or {}).get("drifted"):
        found.append("score_drift")
    if quality_share > policy.max_quality_share:
        found.append("data_quality")
    if performance_degraded:
        found.append("performance")
    if estimate_degraded:
        found.append("estimated_performance")
    if fairness_drifted:
        found.append("fairness_drift")
    return found


def for_review(found: Sequence[str], fairness_drift_action: str) -> list[str]:
    """The violations that ask a person instead of a retrain: a fairness drift when the contract says 'review'."""
    return ["fairness_drift"] if "fairness_drift" in found and fairness_drift_action == "review" else []


def alerting(record: Mapping[str, Any]) -> list[str]:
    """A window's violations that count toward the alert: all of them but those under ``review``."""
    review = set(record.get("review") or [])
    return [v for v in record.get("violations") or [] if v not in review]


def alert(records: Sequence[Mapping[str, Any]], policy: MonitorPolicy) -> Alert:
    """Hysteresis: alert when k of the last n judged windows violate, the latest among them.

    Windows with no verdict (too few rows, no data) neither count for nor against; a window of a different
    champion resets the count, since an earlier model's violations say nothing about the current one.
    """
    if not records:
        return Alert(alert=False, reason="no windows")
    latest = records[-1]
    judged = [r for r in records if r.get("status") == "judged" and r.get("champion") == latest.get("champion")]
    recent = judged[-policy.alert_n :]
    violated = [r for r in recent if alerting(r)]
    fire = latest.get("status") == "judged" and bool(alerting(latest)) and len(violated) >= policy.alert_k
    return Alert(
        alert=fire,
        violated_windows=len(violated),
        judged_windows=len(recent),
        k=policy.alert_k,
        n=policy.alert_n,
        reason=(
            f"{len(violated)} of the last {len(recent)} judged windows violated (alert at {policy.alert_k} "
            f"of {policy.alert_n}, the latest included)"
        ),
    )


def severity(violations: Sequence[str], drift_share: float) -> str:
    """``high`` for performance, data quality, served decisions' fairness, a score drift or many drifted features."""
    kinds = set(violations)
    if kinds & {"performance", "data_quality", "fairness_drift"}:
        return "high"
    return "high" if drift_share >= HIGH_DRIFT_SHARE or "score_drift" in kinds else "medium"


def drift_start(records: Sequence[Mapping[str, Any]], champion: str, policy: MonitorPolicy, default: str) -> str:
    """When the alerted drift began: the start of the k-th last violated window of this champion."""
    violated = [r for r in records if alerting(r) and r.get("champion") == champion]
    return str(violated[-policy.alert_k]["window"]["start"]) if violated else default


def drift_event_payload(
    record: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]], contract: str, policy: MonitorPolicy
) -> dict[str, Any]:
    """The drift event's payload: small (scores of the drifted features, not the report), read by the retrain."""
    window, champion = record["window"], str(record["champion"])
    drift = record.get("drift") or {}
    drifted = [c for c in drift.get("columns", []) if c["drifted"]]
    return {
        "contract": contract,
        "window_start": window["start"],
        "window_end": window["end"],
        "drift_start": drift_start([*earlier, record], champion, policy, window["start"]),
        "features": {c["column"]: round(c["score"], 4) for c in drifted[:20]},
        "violations": record["violations"],
        "severity": severity(record["violations"], drift.get("share", 0)),
        "champion": champion,
    }
