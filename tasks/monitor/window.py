"""Monitoring a window of the inference log against the champion's reference, and the alert policy.

A window's record is kept in the lake, one JSON object per window, so that the alert policy (a violation in k
of the last n windows, the latest included) and post-deploy verification read history from storage, not from
a process that may have restarted:

```
<lake>/<dataset>/monitor/windows/<window end %Y%m%dT%H%M%S%f>.json
<lake>/<dataset>/monitor/reports/<window end>.html          the Evidently report of the window
```
Served requests are matched to labels by an as-of join: the entity's latest application at or before the
request was scored, labelled by that application's outcome once it has been observed.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from closedloop import storage
from closedloop.contract import Contract
from closedloop.inference_log import FEATURE_PREFIX
from closedloop.lake import Lake
from tasks.shared import metrics
from tasks.shared.drift import drift_rules, expected_auc
from tasks.shared.fairness import FairnessLimits, assess

logger = logging.getLogger(__name__)

WINDOWS = "monitor/windows"
REPORTS = "monitor/reports"
EVIDENTLY_SAMPLE_ROWS = 5000  # Evidently runs on a sample of the window; the fast verdicts on every row


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


@lru_cache(maxsize=8)
def reference(tracking_uri: str, name: str, version: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """A version's reference profile and sample (kept with the version when it was registered)."""
    from closedloop.registry import evidence_file
    from tasks.train.tasks import REFERENCE_PROFILE, REFERENCE_SAMPLE

    try:
        profile = json.loads(evidence_file(tracking_uri, name, version, REFERENCE_PROFILE).read_text())
        sample = pd.read_parquet(evidence_file(tracking_uri, name, version, REFERENCE_SAMPLE))
    except Exception as exc:
        raise MonitorError(
            f"{name} v{version} has no reference profile (registered before monitoring existed?): {exc}"
        ) from exc
    return profile, sample


class MonitorError(RuntimeError):
    """The window cannot be judged (no reference, unreadable log); the flow fails rather than pass it."""


def served(frame: pd.DataFrame) -> pd.DataFrame:
    """The answers that were returned (champion and canary), features as served without their prefix."""
    if frame.empty:
        return frame
    answered = frame[frame["variant"] != "shadow"]
    return answered.rename(columns=lambda c: c[len(FEATURE_PREFIX) :] if c.startswith(FEATURE_PREFIX) else c)


def data_quality(contract: Contract, window: pd.DataFrame, features: list[str]) -> dict[str, Any]:
    """Rows outside the contract per column: missing where not nullable, out of range, unseen categories."""
    aggregates = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    problems: dict[str, dict[str, float]] = {}
    n = len(window)
    for name in features:
        if name not in window or name in aggregates or n == 0:
            continue
        column = contract.column(name)
        values = window[name]
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
        if found:
            problems[name] = found
    worst = max((v for p in problems.values() for v in p.values()), default=0.0)
    return {"columns": problems, "worst_share": worst}


def attach_outcomes(lake: Lake, contract: Contract, window: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Each served row with its application's label (NaN until observed by ``now``) and sensitive attributes."""
    key = contract.entity.join_key
    spec = contract.tables[contract.prediction]
    label, label_spec = contract.label, contract.tables[contract.label.source]
    app_keys = [k for k in label_spec.primary_key if k != label_spec.event_time]
    rows = window[["request_id", "entity_id", "scored_at", "score", "decision"]].copy()
    rows["_key"] = rows["entity_id"].astype(str)
    rows["_at"] = pd.to_datetime(rows["scored_at"], utc=True).astype("datetime64[ns, UTC]")
    rows = rows.sort_values("_at", kind="stable")
    apps = lake.read_offline(contract.prediction, columns=list(dict.fromkeys([key, *app_keys, spec.event_time])))
    outcomes = lake.read_offline(label.source, columns=[*app_keys, label_spec.event_time, label.column])
    if apps.empty:
        rows[label.column] = np.nan
        return rows
    if not outcomes.empty:
        matured = outcomes[outcomes[label_spec.event_time] <= now][[*app_keys, label.column]]
        apps = apps.merge(matured, on=app_keys, how="left")
    else:
        apps[label.column] = np.nan
    apps["_key"] = apps[key].astype(str)
    apps["_at"] = pd.to_datetime(apps[spec.event_time], utc=True).astype("datetime64[ns, UTC]")
    apps = apps.sort_values("_at", kind="stable")[["_key", "_at", label.column]]
    out = pd.merge_asof(rows, apps, on="_at", by="_key", direction="backward")
    for source in {c.source for c in contract.columns if c.sensitive}:
        names = [c.name for c in contract.columns if c.sensitive and c.source == source]
        table = lake.read_offline(source, columns=[key, contract.tables[source].event_time, *names])
        if table.empty:
            continue
        table["_key"] = table[key].astype(str)
        table["_at"] = pd.to_datetime(table[contract.tables[source].event_time], utc=True).astype("datetime64[ns, UTC]")
        out = pd.merge_asof(
            out.sort_values("_at", kind="stable"),
            table.sort_values("_at", kind="stable")[["_key", "_at", *names]],
            on="_at",
            by="_key",
            direction="backward",
        )
    return out


def performance(
    contract: Contract, rows: pd.DataFrame, profile: dict[str, Any], policy: MonitorPolicy
) -> dict[str, Any]:
    """Quality on the rows whose label has matured, against the reference's test figures; else a skip reason."""
    label = contract.label
    known = rows[rows[label.column].notna()]
    y = (known[label.column] == label.positive).to_numpy(dtype=int)
    p = known["score"].to_numpy(dtype="float64")
    out: dict[str, Any] = {"labelled_rows": len(known), "reference": profile.get("test_metrics", {})}
    if len(known) < policy.min_labelled or y.sum() == 0 or y.sum() == len(y):
        out["verdict"] = "no_verdict"
        out["reason"] = (
            f"{len(known)} labelled rows with {int(y.sum())} defaults; need {policy.min_labelled} rows and both classes"
        )
        return out
    measured = metrics.metrics(y, p)
    out["metrics"] = measured
    out["intervals"] = metrics.bootstrap_intervals(y, p, rounds=100)
    out["calibration_gap"] = float(p.mean() - y.mean())
    reference_auc = profile.get("test_metrics", {}).get("roc_auc")
    out["degraded"] = bool(reference_auc is not None and measured["roc_auc"] < reference_auc - policy.auc_tolerance)
    out["verdict"] = "degraded" if out["degraded"] else "ok"
    sensitive = [c for c in contract.columns if c.sensitive and c.name in known]
    if sensitive:
        decisions = (known["decision"] == "refuse").to_numpy(dtype=int)
        try:
            out["fairness"] = assess(
                contract, known[[c.name for c in sensitive]], y, p, 0.5, FairnessLimits(), decisions=decisions
            )
        except ValueError as exc:  # one group only in this window: reported, not judged
            out["fairness"] = {"skipped": str(exc)}
    return out


def estimated_performance(scores: np.ndarray, profile: dict[str, Any], policy: MonitorPolicy) -> dict[str, Any]:
    """Label-free estimate (CBPE-style: the calibrated score is the probability of default) before labels mature."""
    if len(scores) == 0:
        return {"verdict": "no_verdict", "reason": "no scores"}
    estimate = expected_auc(scores)
    reference_estimate = profile.get("expected_auc")
    degraded = reference_estimate is not None and estimate < reference_estimate - policy.expected_auc_tolerance
    return {
        "expected_auc": estimate,
        "reference_expected_auc": reference_estimate,
        "expected_default_rate": float(np.mean(scores)),
        "degraded": bool(degraded),
        "verdict": "degraded" if degraded else "ok",
    }


def evidently_report(
    sample_reference: pd.DataFrame, window: pd.DataFrame, contract: Contract, features: list[str], seed: int = 0
) -> tuple[str, dict[str, bool]]:
    """Evidently's data drift report on a sample of the window, with the contract's methods and thresholds.

    Returns the HTML and Evidently's per-column verdicts, which the monitor compares with its own.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from tasks.shared.drift import is_categorical

    rules = drift_rules(contract, features)
    present = [f for f in features if f in window and f in sample_reference]
    current = window[present]
    if len(current) > EVIDENTLY_SAMPLE_ROWS:
        current = current.sample(n=EVIDENTLY_SAMPLE_ROWS, random_state=seed)
    categorical = [f for f in present if is_categorical(contract, f)]
    numerical = [f for f in present if f not in categorical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)

    def dataset(frame: pd.DataFrame) -> Any:
        frame = frame[present].copy()
        for name in categorical:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
        for name in numerical:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        return Dataset.from_pandas(frame.reset_index(drop=True), data_definition=definition)

    methods = {
        f: ("jensenshannon" if rules[f].method == "wasserstein" and f in categorical else rules[f].method)
        for f in present
    }
    preset = DataDriftPreset(
        columns=present,
        per_column_method=methods,  # type: ignore[arg-type]
        per_column_threshold={f: rules[f].threshold for f in present},
    )
    snapshot = Report([preset], include_tests=True).run(dataset(current), dataset(sample_reference))
    verdicts: dict[str, bool] = {}
    for result in snapshot.dict().get("tests", []):
        column = result.get("metric_config", {}).get("params", {}).get("column")
        if result.get("id") == "drift" and column in present:
            verdicts[column] = str(getattr(result.get("status"), "value", result.get("status"))) == "FAIL"
    return snapshot.get_html_str(as_iframe=False), verdicts


def violations(record: dict[str, Any], policy: MonitorPolicy) -> list[str]:
    """What in a window breaks policy: drift (features or score), data quality, performance."""
    found = []
    drift = record.get("drift") or {}
    if drift.get("drifted") and drift.get("share", 0) > policy.drift_share:
        found.append("feature_drift")
    if (drift.get("score") or {}).get("drifted"):
        found.append("score_drift")
    if (record.get("quality") or {}).get("worst_share", 0) > policy.max_quality_share:
        found.append("data_quality")
    if (record.get("performance") or {}).get("degraded"):
        found.append("performance")
    if (record.get("estimated_performance") or {}).get("degraded"):
        found.append("estimated_performance")
    return found


def window_uri(lake: Lake, end: datetime, area: str = WINDOWS, suffix: str = "json") -> str:
    return storage.join(lake.root, area, f"{end:%Y%m%dT%H%M%S%f}.{suffix}")


def write_window(lake: Lake, record: dict[str, Any]) -> str:
    end = datetime.fromisoformat(record["window"]["end"])
    return storage.write_bytes(
        window_uri(lake, end), json.dumps(record, indent=2, default=str).encode(), lake.endpoint_url
    )


def history(lake: Lake, before: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Window records, oldest first, ending at or before ``before``."""
    uris = sorted(
        u for u in storage.list_objects(storage.join(lake.root, WINDOWS), lake.endpoint_url) if u.endswith(".json")
    )
    records = [json.loads(storage.read_bytes(u, lake.endpoint_url)) for u in uris]
    if before is not None:
        records = [r for r in records if datetime.fromisoformat(r["window"]["end"]) <= before]
    return records[-limit:] if limit else records


def alert(records: list[dict[str, Any]], policy: MonitorPolicy) -> dict[str, Any]:
    """Hysteresis: alert when k of the last n judged windows violate, the latest among them.

    Windows with no verdict (too few rows, no data) neither count for nor against; a window of a different
    champion resets the count, since an earlier model's violations say nothing about the current one.
    """
    if not records:
        return {"alert": False, "reason": "no windows"}
    latest = records[-1]
    judged = [r for r in records if r.get("status") == "judged" and r.get("champion") == latest.get("champion")]
    recent = judged[-policy.alert_n :]
    violated = [r for r in recent if r.get("violations")]
    fire = latest.get("status") == "judged" and bool(latest.get("violations")) and len(violated) >= policy.alert_k
    return {
        "alert": fire,
        "violated_windows": len(violated),
        "judged_windows": len(recent),
        "k": policy.alert_k,
        "n": policy.alert_n,
        "reason": (
            f"{len(violated)} of the last {len(recent)} judged windows violated (alert at {policy.alert_k} "
            f"of {policy.alert_n}, the latest included)"
        ),
    }


def severity(record: dict[str, Any]) -> str:
    kinds = set(record.get("violations", []))
    if "performance" in kinds or "data_quality" in kinds:
        return "high"
    drift = record.get("drift") or {}
    return "high" if drift.get("share", 0) >= 0.3 or "score_drift" in kinds else "medium"


def read_window_frame(lake: Lake, start: datetime, end: datetime) -> pd.DataFrame:
    from closedloop.inference_log import read_window

    return served(read_window(lake, start, end))
