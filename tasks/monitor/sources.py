"""Where a window's inputs come from: the inference log, the champion's reference in MLflow, the lake's tables.

Also the staging of a window's columns in the lake for the Dask workers that judge its drift column by column
(a worker on another machine opens a URI, not the flow's memory).
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from closedloop import storage
from closedloop.contract import Contract
from closedloop.inference_log import read_window
from closedloop.lake import Lake, parquet_bytes
from closedloop.registry import PREVIOUS, REFERENCE_PROFILE, REFERENCE_SAMPLE, client, evidence_file
from tasks.monitor.window import OutcomeTables, served
from tasks.shared.features import feature_names

STAGING = "monitor/staging"


class MonitorError(RuntimeError):
    """The window cannot be judged (no reference, unreadable log); the flow fails rather than pass it."""


def _reference_file(tracking_uri: str, name: str, version: str, filename: str) -> Any:
    try:
        return evidence_file(tracking_uri, name, version, filename)
    except Exception as exc:
        raise MonitorError(
            f"{name} v{version} has no reference profile (registered before monitoring existed?): {exc}"
        ) from exc


def reference_profile(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """A version's reference profile (bins and shares of its test window), kept with it at registration."""
    profile: dict[str, Any] = json.loads(_reference_file(tracking_uri, name, version, REFERENCE_PROFILE).read_text())
    return profile


def reference_sample(tracking_uri: str, name: str, version: str) -> pd.DataFrame:
    """A version's reference sample (test-window rows with their scores), for the Evidently report."""
    return pd.read_parquet(_reference_file(tracking_uri, name, version, REFERENCE_SAMPLE))


def previous_version(tracking_uri: str, name: str) -> str | None:
    """The version the ``previous`` alias points at; None when there is none (or the registry cannot say)."""
    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, PREVIOUS).version)
    except Exception:
        return None


def read_served(lake: Lake, start: datetime, end: datetime) -> pd.DataFrame:
    """The window's answered requests from the inference log, features without their prefix."""
    return served(read_window(lake, start, end))


def outcome_tables(lake: Lake, contract: Contract) -> OutcomeTables:
    """The applications, their outcomes and the sensitive attributes' tables, as far as the lake has them."""
    key = contract.entity.join_key
    spec = contract.tables[contract.prediction]
    label, label_spec = contract.label, contract.tables[contract.label.source]
    app_keys = [k for k in label_spec.primary_key if k != label_spec.event_time]
    applications = lake.read_offline(
        contract.prediction, columns=list(dict.fromkeys([key, *app_keys, spec.event_time]))
    )
    outcomes = lake.read_offline(label.source, columns=[*app_keys, label_spec.event_time, label.column])
    sensitive = {}
    if not applications.empty:
        for source in {c.source for c in contract.columns if c.sensitive}:
            names = [c.name for c in contract.columns if c.sensitive and c.source == source]
            sensitive[source] = lake.read_offline(source, columns=[key, contract.tables[source].event_time, *names])
    return OutcomeTables(applications, outcomes, sensitive)


def stage_window(lake: Lake, contract: Contract, frame: pd.DataFrame) -> str:
    """The window's features and scores as one parquet object in the lake; returns its URI."""
    columns = [c for c in [*feature_names(contract), "score"] if c in frame]
    uri = storage.join(lake.root, STAGING, f"{uuid.uuid4().hex}.parquet")
    return storage.write_bytes(uri, parquet_bytes(frame[columns].reset_index(drop=True)), lake.endpoint_url)


def staged_columns(uri: str, endpoint_url: str | None) -> tuple[list[str], np.ndarray]:
    """A staged window's column names and its scores."""
    staged = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri, endpoint_url)))
    scores = staged.read(columns=["score"]).column("score").to_numpy().astype("float64")
    return list(staged.schema_arrow.names), scores


def read_columns(uri: str, columns: list[str], endpoint_url: str | None) -> pd.DataFrame:
    """Only ``columns`` of a staged window."""
    return pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint_url)), columns=columns).to_pandas()
