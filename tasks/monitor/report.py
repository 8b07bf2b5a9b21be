"""Evidently's data drift report of a window, and how its verdicts agree with the monitor's own.

The report runs on a sample of the window (the fast verdicts of :mod:`tasks.shared.drift` see every row) with the
contract's drift methods and thresholds, so the two can be compared column by column.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pydantic import BaseModel

from closedloop.contract import Contract
from tasks.shared.drift import drift_rules, is_categorical

EVIDENTLY_SAMPLE_ROWS = 5000  # Evidently runs on a sample of the window; the fast verdicts on every row


class Agreement(BaseModel):
    """Where the report is, and how Evidently's verdicts compare with the monitor's."""

    uri: str
    mlflow_run: str
    compared_columns: int
    disagree: list[str]
    evidently_drifted: list[str]


def agreement(uri: str, mlflow_run: str, evidently: dict[str, bool], fast: dict[str, bool]) -> Agreement:
    """The columns both judged, those they disagree on, and what Evidently found drifted."""
    common = sorted(set(evidently) & set(fast))
    return Agreement(
        uri=uri,
        mlflow_run=mlflow_run,
        compared_columns=len(common),
        disagree=[c for c in common if evidently[c] != fast[c]],
        evidently_drifted=sorted(c for c, drifted in evidently.items() if drifted),
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


def drift_report(
    sample_reference: pd.DataFrame, window: pd.DataFrame, contract: Contract, features: list[str], seed: int = 0
) -> tuple[str, dict[str, bool]]:
    """Evidently's data drift report on a sample of the window, with the contract's methods and thresholds.

    Returns the HTML and Evidently's per-column verdicts, which the monitor compares with its own.
    """
    from evidently import DataDefinition, Report
    from evidently.presets import DataDriftPreset

    rules = drift_rules(contract, features)
    present = [f for f in features if f in window and f in sample_reference]
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
    preset = DataDriftPreset(
        columns=present,
        per_column_method=methods,  # type: ignore[arg-type]
        per_column_threshold={f: rules[f].threshold for f in present},
    )
    snapshot = Report([preset], include_tests=True).run(
        _dataset(current, present, categorical, definition),
        _dataset(sample_reference, present, categorical, definition),
    )
    verdicts: dict[str, bool] = {}
    for result in snapshot.dict().get("tests", []):
        column = result.get("metric_config", {}).get("params", {}).get("column")
        if result.get("id") == "drift" and column in present:
            verdicts[column] = str(getattr(result.get("status"), "value", result.get("status"))) == "FAIL"
    return snapshot.get_html_str(as_iframe=False), verdicts
