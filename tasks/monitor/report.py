"""Evidently's data drift report of a window, under the monitor's drift rule, and how its verdicts agree with ours.

The report runs on a sample of the window (the fast verdicts of :mod:`tasks.shared.drift` see every row) with the
contract's drift methods and thresholds, so the two can be compared column by column, and with our dataset rule
(:attr:`tasks.monitor.policy.MonitorPolicy.drift_share`), so its headline says what our feature drift verdict says.

Evidently has our three methods by name (``psi``, ``jensenshannon``, ``wasserstein``: its normed variant) but
measures two of them on other bins; :data:`METHOD_NOTES` says where, in the report itself and in docs/monitoring.md.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import BaseModel

from closedloop.contract import Contract, Drift
from tasks.shared.drift import drift_rules, is_categorical

EVIDENTLY_SAMPLE_ROWS = 5000  # Evidently runs on a sample of the window; the fast verdicts on every row
REPORT_PATH = "evidently/data_drift.html"  # the report's path among the window's MLflow run artifacts

# What of our methods Evidently 0.7 does not have (read in evidently/legacy/calculations/stattests/):
METHOD_NOTES = (
    "PSI and Jensen-Shannon: ours bin a numeric column on the reference's deciles; Evidently on Sturges "
    "equal-width bins of both samples together (one bin per value when the reference has 20 values or fewer).",
    "Missing values: ours are a bin of their own (a column that starts arriving empty drifts); Evidently drops "
    "them before measuring, so it cannot see that drift.",
    "Wasserstein: neither side has it for a category column; both measure those with Jensen-Shannon.",
    "The score's drift (PSI 0.2) is ours only: Evidently's report covers the features.",
)


class Agreement(BaseModel):
    """Where the report is, and how Evidently's verdicts compare with the monitor's, per column and for the window."""

    uri: str
    mlflow_run: str
    url: str | None = None  # the report in MLflow's UI: the link a browser opens (the lake's URI may not be)
    compared_columns: int
    disagree: list[str]
    evidently_drifted: list[str]
    drift_share: float  # our dataset rule: feature drift needs more than this share of the columns drifted
    dataset_drift: bool  # ours: the window's feature drift violation
    evidently_dataset_drift: bool  # Evidently's headline under the same rule


@dataclass(frozen=True)
class DriftReport:
    """Evidently's report of a window: the HTML, its per-column verdicts and its dataset verdict."""

    html: str
    columns: dict[str, bool]
    dataset_drift: bool
    threshold: float  # Evidently's dataset drift share that encodes ours (see :func:`dataset_threshold`)


def agreement(
    uri: str,
    mlflow_run: str,
    url: str | None,
    found: DriftReport,
    fast: dict[str, bool],
    dataset_drift: bool,
    drift_share: float,
) -> Agreement:
    """The columns both judged, those they disagree on, what Evidently found drifted, and both dataset verdicts."""
    evidently = found.columns
    common = sorted(set(evidently) & set(fast))
    return Agreement(
        uri=uri,
        mlflow_run=mlflow_run,
        url=url,
        compared_columns=len(common),
        disagree=[c for c in common if evidently[c] != fast[c]],
        evidently_drifted=sorted(c for c, drifted in evidently.items() if drifted),
        drift_share=drift_share,
        dataset_drift=dataset_drift,
        evidently_dataset_drift=found.dataset_drift,
    )


def dataset_threshold(drift_share: float, columns: int) -> float:
    """Evidently's dataset drift share that says what ours says, on ``columns`` judged columns.

    Ours calls a window drifted when *more than* ``drift_share`` of its columns drifted; Evidently when *at least*
    its threshold did. Both count k drifted of n, so the threshold is the least k/n above ours (computed as both
    compute a share, k / n); (n + 1) / n, which no share reaches, when there is none.
    """
    n = max(columns, 1)
    return next((k / n for k in range(1, n + 1) if k / n > drift_share), (n + 1) / n)


def mlflow_artifact_url(tracking_uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """The page of MLflow's UI that shows one artifact of a run (an HTML one rendered in the page).

    MLflow 3's UI routes a run's artifact as ``#/experiments/<id>/runs/<run>/artifacts/<path>`` (its
    ``getRunPageRoute`` with an artifact path); the UI is served where the tracking server is. Without
    ``workflowType`` it shows the run in its GenAI layout, whatever the experiment's kind.
    """
    return (
        f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"
        "?workflowType=machine_learning"
    )


def _dataset(frame: pd.DataFrame, present: list[str], categorical: list[str], definition: Any) -> Any:
    """An Evidently dataset of ``frame``: categories as objects (None for missing), the rest as floats."""
    from evidently import Dataset

    frame = frame[present].copy()
    for name in categorical:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    for name in present:
        if name not in categorical:
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    return Dataset.from_pandas(frame.reset_index(drop=True), data_definition=definition)


def _note(rules: dict[str, Drift], methods: Mapping[str, str], drift_share: float, threshold: float) -> str:
    """The box atop the report: our dataset rule as Evidently applies it, and where its methods are not ours."""
    n = len(rules)
    needed = round(threshold * n)
    rule = (
        f"A window's features drift when more than {drift_share * 100:g}% of its {n} judged columns drift "
        f"(MonitorPolicy.drift_share, the monitor's alert rule). Evidently counts a share at or above its "
        f"threshold, so the threshold shown below is {threshold:.4g}: "
        + (f"{needed} of {n} columns." if needed <= n else f"more than all {n} columns: never.")
    )
    mapped = [
        f"{name}: the contract's {rule_.method} {rule_.threshold:g} is {methods[name]} {rule_.threshold:g} here "
        "(a category has no order to measure a Wasserstein distance on)"
        for name, rule_ in rules.items()
        if methods[name] != rule_.method
    ]
    items = "".join(f"<li>{html.escape(line)}</li>" for line in (*mapped, *METHOD_NOTES))
    return (
        '<div style="font-family:sans-serif;margin:16px;padding:12px 16px;border:1px solid #c8c8c8;'
        'border-radius:4px;background:#f7f7f7">'
        "<b>closedloop's drift rule.</b> "
        f"{html.escape(rule)} Each column: the contract's method and threshold (default PSI 0.2). Where "
        f"Evidently does not measure our way:<ul>{items}</ul></div>"
    )


def _with_note(report_html: str, note: str) -> str:
    """``report_html`` with ``note`` first in its body."""
    head, body, rest = report_html.partition("<body>")
    return f"{head}{body}\n{note}{rest}" if body else f"{note}{report_html}"


def _verdicts(snapshot: Any, present: list[str]) -> tuple[dict[str, bool], bool]:
    """Evidently's test results: each column's drift test, and the drifted-columns share test of the window."""
    columns: dict[str, bool] = {}
    dataset = False
    for result in snapshot.dict().get("tests", []):
        params = result.get("metric_config", {}).get("params", {})
        failed = str(getattr(result.get("status"), "value", result.get("status"))) == "FAIL"
        if result.get("id") == "drift" and params.get("column") in present:
            columns[params["column"]] = failed
        elif params.get("type") == "evidently:metric_v2:DriftedColumnsCount":
            dataset = failed  # "share of drifted columns less than the threshold" failed: the window drifted
    return columns, dataset


def drift_report(
    sample_reference: pd.DataFrame,
    window: pd.DataFrame,
    contract: Contract,
    features: list[str],
    drift_share: float,
    seed: int = 0,
) -> DriftReport:
    """Evidently's data drift report on a sample of the window, with the contract's methods and our dataset rule.

    ``drift_share``: the policy's; the report's headline says "Dataset Drift is detected" exactly when more than
    that share of its columns drifted, as the monitor's feature drift verdict does.
    """
    from evidently import DataDefinition, Report
    from evidently.presets import DataDriftPreset

    present = [f for f in features if f in window and f in sample_reference]
    rules = {name: rule for name, rule in drift_rules(contract, features).items() if name in present}
    current = window[present]
    if len(current) > EVIDENTLY_SAMPLE_ROWS:
        current = current.sample(n=EVIDENTLY_SAMPLE_ROWS, random_state=seed)
    categorical = [f for f in present if is_categorical(contract, f)]
    numerical = [f for f in present if f not in categorical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    methods = {
        f: ("jensenshannon" if rules[f].method == "wasserstein" and f in categorical else rules[f].method)
        for f in present
    }
    threshold = dataset_threshold(drift_share, len(present))
    preset = DataDriftPreset(
        columns=present,
        drift_share=threshold,
        per_column_method=methods,  # type: ignore[arg-type]
        per_column_threshold={f: rules[f].threshold for f in present},
    )
    snapshot = Report([preset], include_tests=True).run(
        _dataset(current, present, categorical, definition),
        _dataset(sample_reference, present, categorical, definition),
    )
    columns, dataset = _verdicts(snapshot, present)
    page = _with_note(snapshot.get_html_str(as_iframe=False), _note(rules, methods, drift_share, threshold))
    return DriftReport(html=page, columns=columns, dataset_drift=dataset, threshold=threshold)
