"""The monitor flow: a window of the inference log -> drift, quality, performance -> alert -> drift event.

Also the post-deploy verification: the first judged window of a new champion checks that the violations that
led to it are gone and, on labelled rows, that it does no worse than ``previous``; otherwise it rolls back.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, Field

from closedloop import events, storage
from closedloop.contract import Drift, contract_at
from closedloop.lake import Lake, parquet_bytes
from closedloop.registry import champion_version
from closedloop.settings import load_settings
from tasks.monitor import window
from tasks.shared.distributed import dask_runner
from tasks.shared.drift import column_drift, drift_rules, judged_rules, window_drift, window_summary
from tasks.shared.features import feature_names, typed_features


class MonitorParams(BaseModel):
    """Which window to judge; Prefect renders this as the run form in the UI."""

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    window_end: datetime | None = Field(default=None, description="end of the window (exclusive); empty: now")
    window_minutes: float = Field(default=24 * 60, gt=0, description="length of the window")
    policy: window.MonitorPolicy = Field(default_factory=window.MonitorPolicy)
    evidently: bool = Field(default=True, description="write the Evidently report of the window")
    rollback_margin: float = Field(
        default=0.01, ge=0, description="post-deploy: roll back if the new champion's AUC trails previous by more"
    )
    engine: Literal["local", "dask"] = Field(
        default="local",
        description="local: drift in the flow's process; dask: drift by column chunks on CLOSEDLOOP_DASK_ADDRESS "
        "(or a LocalCluster), for windows of many columns",
    )
    column_chunks: int = Field(default=4, ge=1, le=256, description="engine dask: column chunks (mapped tasks)")


class MonitorResult(BaseModel):
    dataset: str
    window: dict[str, str]
    status: str  # no_champion | no_data | too_few_rows | judged
    champion: str | None = None
    rows: int = 0
    violations: list[str] = []
    drifted: list[str] = []
    alert: dict[str, Any] = {}
    event_id: str | None = None
    report_uri: str | None = None
    agreement: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    record_uri: str | None = None


@task(name="judge_window", cache_policy=NO_CACHE)
def judge_window(
    contract_path: str,
    frame: pd.DataFrame,
    champion: str,
    policy: window.MonitorPolicy,
    now: datetime,
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Drift of every feature and of the score, data quality, performance (labelled and estimated).

    ``drift``: the window's drift record when it was already computed on a cluster (:func:`drift_by_chunks`).
    """
    settings = load_settings()
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    profile, _ = window.reference(settings.mlflow_tracking_uri, contract.name, champion)
    features = feature_names(contract)
    scores = frame["score"].to_numpy(dtype="float64")
    rows = window.attach_outcomes(lake, contract, frame, now)
    return {
        "drift": drift if drift is not None else window_drift(profile, frame, drift_rules(contract, features), scores),
        "quality": window.data_quality(contract, frame, features),
        "performance": window.performance(contract, rows, profile, policy),
        "estimated_performance": window.estimated_performance(scores, profile, policy),
    }


def _read_columns(uri: str, columns: list[str]) -> pd.DataFrame:
    settings = load_settings()
    return pq.read_table(io.BytesIO(storage.read_bytes(uri, settings.s3_endpoint_url)), columns=columns).to_pandas()


@task(name="column_drift_chunk", cache_policy=NO_CACHE)
def column_drift_chunk(window_uri: str, reference: dict[str, Any], rules: dict[str, Drift]) -> list[dict[str, Any]]:
    """Drift verdicts of one chunk of columns; the worker reads only its columns of the staged window."""
    window = _read_columns(window_uri, list(rules))
    return [column_drift(name, reference[name], window[name], rule).to_dict() for name, rule in rules.items()]


@flow(name="drift_by_chunks")
def drift_by_chunks(contract_path: str, window_uri: str, champion: str, chunks: int) -> dict[str, Any]:
    """The window's drift with its columns split into ``chunks`` mapped tasks (run on Dask by the monitor).

    The window is staged as parquet (``window_uri``): a subflow's parameters are recorded by Prefect, so the
    frame itself never is one.
    """
    settings = load_settings()
    contract = contract_at(contract_path)
    profile, _ = window.reference(settings.mlflow_tracking_uri, contract.name, champion)
    staged = pq.ParquetFile(io.BytesIO(storage.read_bytes(window_uri, settings.s3_endpoint_url)))
    scores = staged.read(columns=["score"]).column("score").to_numpy().astype("float64")
    present = pd.DataFrame(columns=staged.schema_arrow.names)
    rules = judged_rules(profile, present, drift_rules(contract, feature_names(contract)))
    if not rules:
        return window_summary(profile, len(scores), [], scores)
    parts = [list(p) for p in np.array_split(np.array(list(rules), dtype=object), min(chunks, len(rules))) if len(p)]
    futures = column_drift_chunk.map(
        unmapped(window_uri),
        [{n: profile["columns"][n] for n in part} for part in parts],
        [{n: rules[n] for n in part} for part in parts],
    )
    columns = [column for future in futures for column in future.result()]
    return window_summary(profile, len(scores), columns, scores)


def _drift_on_dask(settings: Any, contract_path: str, frame: pd.DataFrame, champion: str, chunks: int) -> Any:
    """Stage the window's features and scores in the lake, judge them by column chunks on Dask, drop the stage."""
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    columns = [c for c in [*feature_names(contract), "score"] if c in frame]
    uri = storage.join(lake.root, "monitor", "staging", f"{uuid.uuid4().hex}.parquet")
    storage.write_bytes(uri, parquet_bytes(frame[columns].reset_index(drop=True)), lake.endpoint_url)
    try:
        runner = dask_runner(settings.dask_address, settings.dask_workers)
        return drift_by_chunks.with_options(task_runner=runner)(contract_path, uri, champion, chunks)
    finally:
        storage.delete(uri, lake.endpoint_url)


@task(name="evidently_report", cache_policy=NO_CACHE)
def evidently_report(
    contract_path: str, frame: pd.DataFrame, champion: str, end: datetime, drifted: dict[str, bool]
) -> dict[str, Any]:
    """Evidently's report on a sample of the window: saved to the lake, logged to MLflow, linked from Prefect."""
    import mlflow

    settings = load_settings()
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    _, sample = window.reference(settings.mlflow_tracking_uri, contract.name, champion)
    features = feature_names(contract)
    html, verdicts = window.evidently_report(sample, frame, contract, features)
    uri = storage.write_bytes(window.window_uri(lake, end, window.REPORTS, "html"), html.encode(), lake.endpoint_url)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    experiment = f"{contract.name}-monitoring"
    found = mlflow.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlflow.create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"window {end:%Y-%m-%d %H:%M}") as run:
        mlflow.set_tags({"closedloop.dataset": contract.name, "champion": champion})
        mlflow.log_text(html, "evidently/data_drift.html")
        mlflow.log_metric("drifted_columns_evidently", sum(verdicts.values()))
        mlflow.log_metric("drifted_columns_fast", sum(drifted.values()))
    common = sorted(set(verdicts) & set(drifted))
    disagree = [c for c in common if verdicts[c] != drifted[c]]
    link = uri if "://" in uri else f"file://{uri}"
    create_link_artifact(link=link, link_text="Evidently data drift report", description=f"window ending {end}")
    return {
        "uri": uri,
        "mlflow_run": run.info.run_id,
        "compared_columns": len(common),
        "disagree": disagree,
        "evidently_drifted": sorted(c for c, v in verdicts.items() if v),
    }


@task(name="post_deploy_verification", cache_policy=NO_CACHE)
def verify_new_champion(
    contract_path: str, frame: pd.DataFrame, record: dict[str, Any], before: dict[str, Any] | None, margin: float
) -> dict[str, Any]:
    """First judged window of a new champion: are the violations that led to it gone, and is it no worse?"""
    from closedloop.registry import client, load_model
    from tasks.promote.promotion import PREVIOUS, rollback

    settings = load_settings()
    contract = contract_at(contract_path)
    uri, name = settings.mlflow_tracking_uri, contract.name
    lake = Lake.of(settings.lake_uri, name, settings.s3_endpoint_url)
    earlier = set(before.get("violations", [])) if before else set()
    out: dict[str, Any] = {
        "champion": record["champion"],
        "earlier_violations": sorted(earlier),
        "still_violated": sorted(earlier & set(record["violations"])),
    }
    try:
        previous = str(client(uri).get_model_version_by_alias(name, PREVIOUS).version)
    except Exception:
        out["comparison"] = "no previous champion"
        out["verdict"] = "pass" if not out["still_violated"] else "violations remain"
        return out
    rows = window.attach_outcomes(lake, contract, frame, datetime.now(UTC))
    known = rows[contract.label.column].notna().to_numpy()
    y = (rows.loc[known, contract.label.column] == contract.label.positive).to_numpy(dtype=int)
    out["labelled_rows"] = int(known.sum())
    if known.sum() < 50 or y.sum() == 0 or y.sum() == len(y):
        out["comparison"] = "not enough labelled rows yet"
        out["verdict"] = "pass" if not out["still_violated"] else "violations remain"
        return out
    from sklearn.metrics import roc_auc_score

    labelled = frame.set_index("request_id").loc[rows.loc[known, "request_id"]]
    matrix = typed_features(labelled.reset_index(), contract)
    previous_scores = load_model(uri, name, previous).predict_proba(matrix)[:, 1]
    current_auc = float(roc_auc_score(y, labelled["score"].to_numpy(dtype="float64")))
    previous_auc = float(roc_auc_score(y, previous_scores))
    out["comparison"] = {"champion_auc": current_auc, "previous": previous, "previous_auc": previous_auc}
    if current_auc < previous_auc - margin:
        reason = f"post-deploy: v{record['champion']} AUC {current_auc:.4f} < v{previous} {previous_auc:.4f} - {margin}"
        out["rollback"] = rollback(uri, name, reason, by="monitor flow")
        event = emit_event(
            event=events.ROLLED_BACK,
            resource=events.model_resource(name),
            payload={"from": record["champion"], "to": previous, "reason": reason},
        )
        out["event_id"] = str(event.id) if event else None
        out["verdict"] = "rolled back"
    else:
        out["verdict"] = "pass" if not out["still_violated"] else "violations remain"
    return out


def _summary(result: MonitorResult, record: dict[str, Any]) -> str:
    lines = [
        f"# Monitoring window of {result.dataset}",
        f"{result.window['start']} .. {result.window['end']}: **{result.status}**, {result.rows} served rows, "
        f"champion v{result.champion}",
        "",
        f"Violations: {', '.join(result.violations) or 'none'}; alert: {result.alert.get('reason', '-')}",
        "",
    ]
    drift = record.get("drift") or {}
    if drift.get("columns"):
        lines += ["| column | method | score | threshold | drifted |", "|---|---|---|---|---|"]
        for c in sorted(drift["columns"], key=lambda c: -c["score"]):
            lines.append(f"| {c['column']} | {c['method']} | {c['score']:.4f} | {c['threshold']} | {c['drifted']} |")
    if result.report_uri:
        lines += ["", f"Evidently report: {result.report_uri}"]
    return "\n".join(lines)


@flow(name="monitor")
def monitor(params: MonitorParams | None = None) -> MonitorResult:
    """Judge one window of served traffic against the champion's reference; alert with hysteresis."""
    params = params or MonitorParams()
    logger = get_run_logger()
    settings = load_settings()
    contract_path = str(params.contract or settings.contract)
    contract = contract_at(contract_path)
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    end = (params.window_end or datetime.now(UTC)).astimezone(UTC)
    start = end - timedelta(minutes=params.window_minutes)
    window = {"start": start.isoformat(), "end": end.isoformat()}
    champion = champion_version(settings.mlflow_tracking_uri, contract.name)
    result = MonitorResult(dataset=contract.name, window=window, status="no_champion", champion=champion)
    if champion is None:
        logger.info("no champion for %s: nothing is served, nothing to monitor", contract.name)
        return result
    frame = window.read_window_frame(lake, start, end)
    record: dict[str, Any] = {"dataset": contract.name, "window": window, "champion": champion, "rows": len(frame)}
    result.rows = len(frame)
    if frame.empty:
        result.status = record["status"] = "no_data"
    elif len(frame) < params.policy.min_rows:
        result.status = record["status"] = "too_few_rows"
    else:
        result.status = record["status"] = "judged"
        drift = None
        if params.engine == "dask":  # the column chunks run on the cluster's workers, side by side
            drift = _drift_on_dask(settings, contract_path, frame, champion, params.column_chunks)
        record.update(judge_window(contract_path, frame, champion, params.policy, datetime.now(UTC), drift))
        record["violations"] = result.violations = window.violations(record, params.policy)
        result.drifted = record["drift"]["drifted"]
    previous_records = window.history(lake, before=end)
    previous_records = [r for r in previous_records if r["window"]["end"] != window["end"]]
    if result.status == "judged" and params.evidently:
        fast = {c["column"]: c["drifted"] for c in record["drift"]["columns"]}
        report = evidently_report(contract_path, frame, champion, end, fast)
        result.report_uri, result.agreement = report["uri"], report
        record["evidently"] = report
    if result.status == "judged":
        judged_before = [r for r in previous_records if r.get("status") == "judged"]
        if judged_before and judged_before[-1].get("champion") != champion:
            result.verification = verify_new_champion(
                contract_path, frame, record, judged_before[-1], params.rollback_margin
            )
            record["verification"] = result.verification
    decision = window.alert([*previous_records, record], params.policy)
    record["alert"] = result.alert = decision
    if decision["alert"]:
        violated = [r for r in [*previous_records, record] if r.get("violations") and r.get("champion") == champion]
        drift_start = violated[-params.policy.alert_k]["window"]["start"] if violated else window["start"]
        scored = [c for c in record["drift"]["columns"] if c["drifted"]]
        event = emit_event(
            event=events.DRIFT_DETECTED,
            resource=events.model_resource(contract.name),
            payload={
                "contract": contract_path,
                "window_start": window["start"],
                "window_end": window["end"],
                "drift_start": drift_start,
                "features": {c["column"]: round(c["score"], 4) for c in scored[:20]},
                "violations": record["violations"],
                "severity": window.severity(record),
                "champion": champion,
            },
        )
        result.event_id = record["event_id"] = str(event.id) if event else None
        record["event_occurred"] = event.occurred.isoformat() if event else None
        logger.warning("drift alert for %s v%s: %s (event %s)", contract.name, champion, decision, result.event_id)
    result.record_uri = window.write_window(lake, record)
    create_markdown_artifact(
        key=f"monitor-{contract.name.replace('_', '-')}", markdown=_summary(result, record), description=str(window)
    )
    return result
