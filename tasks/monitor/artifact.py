"""The monitor run's Prefect artifact: a window's verdicts as a reviewer reads them in the UI.

A sentence for the artifact's description, and markdown with one section per check: feature drift, score drift,
data quality, estimated performance (label-free), realized performance, fairness drift, training-serving skew, the
post-deploy verification, and the Evidently report's page in MLflow. Pure: the window's record in, text out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tasks.monitor import records, skew
from tasks.monitor.fairness_drift import FairnessDrift
from tasks.monitor.policy import MonitorPolicy
from tasks.monitor.report import Agreement
from tasks.monitor.verification import Comparison, Verification
from tasks.monitor.window import Performance, Verdicts, WindowRecord

NOT_JUDGED = {
    "no_data": "no served requests in the window",
    "too_few_rows": "too few served requests to judge",
    "no_champion": "no champion is served",
}
PERFORMANCE_METRICS = ("roc_auc", "pr_auc", "ks", "brier", "log_loss")


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kinds(violations: list[str]) -> str:
    return ", ".join(v.replace("_", " ") for v in violations) or "none"


def label(record: WindowRecord) -> str:
    """The window's name: its span in UTC, as its MLflow run is named too."""
    return records.window_label(datetime.fromisoformat(record.window.start), datetime.fromisoformat(record.window.end))


def description(record: WindowRecord) -> str:
    """One sentence: which window of which model, what was found, whether it raised the alert."""
    head = f"Window {label(record)} of {record.dataset} v{record.champion}"
    if record.status != "judged" or record.verdicts is None:
        return f"{head}: not judged, {NOT_JUDGED.get(record.status, record.status)} ({record.rows} served rows)."
    verdicts, alert = record.verdicts, record.alert
    found = (
        f"{len(verdicts.violations)} violation{'s' if len(verdicts.violations) != 1 else ''} "
        f"({_kinds(verdicts.violations)})"
        if verdicts.violations
        else "no violation"
    )
    raised = "the drift alert was raised" if alert and alert.alert else "no alert"
    return f"{head}: judged on {record.rows} served rows, {found}; {raised}."


def _header(record: WindowRecord) -> list[str]:
    lines = [
        f"# Monitoring window of {record.dataset}",
        "",
        f"**{label(record)}**, champion v{record.champion}: **{record.status}**, {record.rows} served rows.",
        "",
    ]
    if record.verdicts is not None:
        review = record.verdicts.review
        sent = f" (sent to a person, not counted toward the alert: {_kinds(review)})" if review else ""
        lines += [f"Violations: **{_kinds(record.verdicts.violations)}**{sent}.", ""]
    if record.alert is not None:
        fired = "not raised"
        if record.alert.alert:
            fired = "**raised**" + (f" (event `{record.event_id}`)" if record.event_id else "")
        lines += [f"Drift alert {fired}: {record.alert.reason}.", ""]
    return lines


def _feature_drift(drift: dict[str, Any], policy: MonitorPolicy) -> list[str]:
    columns = drift.get("columns") or []
    drifted = drift.get("drifted") or []
    violated = bool(drifted) and drift.get("share", 0) > policy.drift_share
    lines = [
        "## Feature drift",
        "",
        f"{len(drifted)} of {len(columns)} features drifted (share {drift.get('share', 0):.3f}); the window violates "
        f"when more than {policy.drift_share * 100:g}% do: **{'violated' if violated else 'ok'}**.",
    ]
    if columns:
        lines += ["", "| column | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        for c in sorted(columns, key=lambda c: -c["score"]):
            lines.append(f"| {c['column']} | {c['method']} | {c['score']:.4f} | {c['threshold']} | {c['drifted']} |")
    return lines


def _score_drift(drift: dict[str, Any]) -> list[str]:
    score = drift.get("score")
    if not score:
        return ["## Score drift", "", "No scores in the window."]
    return [
        "## Score drift",
        "",
        f"The served scores against the reference's: {score['method']} {score['score']:.4f}, threshold "
        f"{score['threshold']}: **{'drifted' if score['drifted'] else 'ok'}**.",
    ]


def _data_quality(verdicts: Verdicts, policy: MonitorPolicy) -> list[str]:
    quality = verdicts.quality
    violated = quality.worst_share > policy.max_quality_share
    lines = [
        "## Data quality",
        "",
        f"Worst column: {quality.worst_share:.2%} of rows outside the contract (tolerated "
        f"{policy.max_quality_share:.2%}): **{'violated' if violated else 'ok'}**.",
    ]
    if quality.columns:
        lines += ["", "| column | problem | share of rows |", "|---|---|---|"]
        for column, problems in sorted(quality.columns.items()):
            lines += [f"| {column} | {kind.replace('_', ' ')} | {share:.2%} |" for kind, share in problems.items()]
    return lines


def _estimated(verdicts: Verdicts, policy: MonitorPolicy) -> list[str]:
    estimate = verdicts.estimated_performance
    lines = ["## Estimated performance (label-free)", ""]
    if estimate.expected_auc is None:
        return [*lines, f"No estimate: {estimate.reason}."]
    rate = estimate.expected_default_rate
    return [
        *lines,
        f"Expected AUC {_number(estimate.expected_auc)} (the AUC the scores would have if calibrated) against the "
        f"reference's {_number(estimate.reference_expected_auc)}, drop tolerated {policy.expected_auc_tolerance}: "
        f"**{estimate.verdict}**" + ("." if rate is None else f"; expected default rate {rate:.1%}."),
    ]


def _realized(performance: Performance, policy: MonitorPolicy) -> list[str]:
    lines = ["## Realized performance", ""]
    if performance.metrics is None:
        return [*lines, f"Not judged yet: {performance.reason}."]
    lines += [
        f"On {performance.labelled_rows} served rows whose label has matured: **{performance.verdict}** (AUC drop "
        f"tolerated {policy.auc_tolerance}); calibration gap {_number(performance.calibration_gap)}.",
        "",
        "| metric | window | 95% interval | reference |",
        "|---|---|---|---|",
    ]
    intervals = performance.intervals or {}
    for name in (m for m in PERFORMANCE_METRICS if m in performance.metrics):
        low, high = intervals.get(name, (None, None))
        interval = f"{_number(low)}-{_number(high)}" if low is not None else "-"
        reference = performance.reference.get(name)
        lines.append(f"| {name} | {_number(performance.metrics[name])} | {interval} | {_number(reference)} |")
    return lines


def fairness_lines(fairness: FairnessDrift) -> list[str]:
    """The fairness verdict as a markdown table: per attribute its disparities, drifted groups and breaches."""
    lines = [
        f"## Fairness drift (action: {fairness.action}, at most {fairness.max_fairness_drift:g} per group)",
        "",
        "| attribute | verdict | parity difference | disparate impact | TPR gap | FPR gap | drifted groups "
        "| breaches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, judged in fairness.attributes.items():
        lines.append(
            f"| {name} | {judged.verdict} | {_number(judged.demographic_parity_difference)} | "
            f"{_number(judged.disparate_impact)} | {_number(judged.tpr_gap)} | {_number(judged.fpr_gap)} | "
            f"{', '.join(judged.drifted_groups) or '-'} | {'; '.join(judged.breaches) or judged.reason or '-'} |"
        )
    return lines


def _skew(entry: dict[str, Any]) -> list[str]:
    return ["## Training-serving skew", "", skew.markdown(skew.SkewVerdict.model_validate(entry))]


def _verification(checked: Verification) -> list[str]:
    """The post-deploy verdict of a new champion's first window: violations gone, no worse than previous."""
    lines = [
        "## Post-deploy verification",
        "",
        f"v{checked.champion}'s first judged window: **{checked.verdict}**. Violations that led to it: "
        f"{_kinds(checked.earlier_violations)}; still violated: {_kinds(checked.still_violated)}.",
    ]
    compared = checked.comparison
    if isinstance(compared, Comparison):
        lines.append(
            f"AUC on {checked.labelled_rows} labelled rows: v{checked.champion} {compared.champion_auc:.4f}, "
            f"v{compared.previous} {compared.previous_auc:.4f}."
        )
    else:
        lines.append(f"No comparison with the previous champion: {compared}.")
    if checked.rollback is not None:
        lines.append(f"Rolled back to v{checked.rollback.get('champion')} (event `{checked.event_id}`).")
    return lines


def _evidently(found: Agreement) -> list[str]:
    def said(drifted: bool) -> str:
        return "drifted" if drifted else "not drifted"

    link = f"[Evidently data drift report]({found.url})" if found.url else f"Evidently data drift report: {found.uri}"
    agree = found.dataset_drift == found.evidently_dataset_drift
    return [
        "## Evidently report",
        "",
        f"{link} (MLflow run `{found.mlflow_run}`), on a sample of the window under the same rule (more than "
        f"{found.drift_share * 100:g}% of the features): Evidently says **{said(found.evidently_dataset_drift)}**, the "
        f"monitor **{said(found.dataset_drift)}**{'' if agree else ' (they disagree)'}. Columns both judged: "
        f"{found.compared_columns}; disagreeing: {', '.join(found.disagree) or 'none'}.",
    ]


def markdown(record: WindowRecord, policy: MonitorPolicy) -> str:
    """The artifact's markdown: the header, then a section per check the window has."""
    lines = _header(record)
    verdicts = record.verdicts
    sections: list[list[str]] = []
    if verdicts is not None:
        sections += [
            _feature_drift(verdicts.drift, policy),
            _score_drift(verdicts.drift),
            _data_quality(verdicts, policy),
            _estimated(verdicts, policy),
            _realized(verdicts.performance, policy),
        ]
        if verdicts.fairness_drift is not None:
            sections.append(fairness_lines(verdicts.fairness_drift))
    if record.skew is not None:
        sections.append(_skew(record.skew))
    if record.verification is not None:
        sections.append(_verification(record.verification))
    if record.evidently is not None:
        sections.append(_evidently(record.evidently))
    for section in sections:
        lines += [*section, ""]
    return "\n".join(lines).rstrip() + "\n"
