"""The monitor flow: a window of the inference log -> drift, quality, performance, fairness -> alert -> drift event.

Also the post-deploy verification: the first judged window of a new champion checks that the violations that
led to it are gone and, on labelled rows, that it does no worse than ``previous``; otherwise it rolls back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from pydantic import BaseModel, Field

from closedloop import events, seal, storage
from closedloop.contract import Contract, contract_at
from closedloop.lake import Lake
from closedloop.settings import Settings, load_settings
from tasks.monitor import artifact, policy, records, skew, sources, window
from tasks.monitor.fairness_drift import FairnessDrift
from tasks.monitor.policy import Alert, MonitorPolicy, WindowStatus
from tasks.monitor.report import Agreement
from tasks.monitor.skew import SkewVerdict
from tasks.monitor.tasks import (
    column_drift_chunk,
    evidently_report,
    judge_window,
    training_serving_skew,
    verify_new_champion,
)
from tasks.monitor.verification import Comparison, Verification, replaced_champion_violations
from tasks.promote import promotion
from tasks.shared.dask_cluster import dask_runner
from tasks.shared.drift import window_summary

if TYPE_CHECKING:
    import pandas as pd


class MonitorParams(BaseModel):
    """Which window to judge; Prefect renders this as the run form in the UI."""

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    window_end: datetime | None = Field(default=None, description="end of the window (exclusive); empty: now")
    window_minutes: float = Field(default=24 * 60, gt=0, description="length of the window")
    policy: MonitorPolicy = Field(default_factory=MonitorPolicy)
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
    skew: bool = Field(
        default=True, description="re-read a sample of the window from the offline store (training-serving skew)"
    )


class MonitorResult(BaseModel):
    dataset: str
    window: dict[str, str]
    status: WindowStatus
    champion: str | None = None
    rows: int = 0
    violations: list[str] = []
    drifted: list[str] = []
    alert: Alert | None = None
    event_id: str | None = None
    report_uri: str | None = None
    agreement: Agreement | None = None
    verification: Verification | None = None
    record_uri: str | None = None
    fairness_drifted: list[str] = []  # sensitive attributes whose served fairness drifted
    fairness_event_id: str | None = None
    review: list[str] = []  # violations sent to a person, not counted toward the alert
    # SKEW: the window's training-serving skew verdict (tasks/monitor/skew.py), copied from the record's "skew"
    skew: dict[str, Any] | None = None


@flow(name="drift_by_chunks")
def drift_by_chunks(contract_path: str, window_uri: str, champion: str, chunks: int) -> dict[str, Any]:
    """The window's drift with its columns split into ``chunks`` mapped tasks (run on Dask by the monitor).

    The window is staged as parquet (``window_uri``): a subflow's parameters are recorded by Prefect, so the
    frame itself never is one.
    """
    settings = load_settings()
    contract = contract_at(contract_path)
    profile = sources.reference_profile(settings.mlflow_tracking_uri, contract.name, champion)
    columns, scores = sources.staged_columns(window_uri, settings.s3_endpoint_url)
    parts = window.drift_chunks(profile, columns, contract, chunks)
    futures = column_drift_chunk.map(
        unmapped(window_uri),
        [part.references for part in parts],
        [part.rules for part in parts],
        unmapped(settings.s3_endpoint_url),
    )
    return window_summary(profile, len(scores), [column for future in futures for column in future.result()], scores)


def drift_on_dask(
    settings: Settings,
    contract_path: str,
    contract: Contract,
    lake: Lake,
    frame: pd.DataFrame,
    champion: str,
    chunks: int,
) -> dict[str, Any]:
    """Stage the window's features and scores in the lake, judge them by column chunks on Dask, drop the stage."""
    uri = sources.stage_window(lake, contract, frame)
    try:
        runner = dask_runner(settings.dask_address, settings.dask_workers)
        return drift_by_chunks.with_options(task_runner=runner)(contract_path, uri, champion, chunks)
    finally:
        storage.delete(uri, lake.endpoint_url)


def _roll_back(settings: Settings, contract: Contract, checked: Verification) -> Verification:
    """Put the previous champion back and say so with an event: the verification's verdict, carried out."""
    previous = checked.comparison.previous if isinstance(checked.comparison, Comparison) else None
    reason = str(checked.rollback_reason)
    keys = seal.key_files(settings)
    rolled = promotion.rollback(settings.mlflow_tracking_uri, contract.name, reason, by="monitor flow", keys=keys)
    event = emit_event(
        event=events.ROLLED_BACK,
        resource=events.model_resource(contract.name),
        payload={"from": checked.champion, "to": previous, "reason": reason},
    )
    return checked.rolled_back(rolled.model_dump(), str(event.id) if event else None)


def _judged(
    settings: Settings,
    contract_path: str,
    contract: Contract,
    lake: Lake,
    frame: pd.DataFrame,
    record: window.WindowRecord,
    earlier: list[dict[str, Any]],
    params: MonitorParams,
) -> window.WindowRecord:
    """The record of a window with enough rows: its verdicts, Evidently's report, the post-deploy verification."""
    champion, end = record.champion, datetime.fromisoformat(record.window.end)
    drift = None
    if params.engine == "dask":  # the column chunks run on the cluster's workers, side by side
        drift = drift_on_dask(settings, contract_path, contract, lake, frame, champion, params.column_chunks)
    verdicts = judge_window(settings, contract, lake, frame, champion, params.policy, datetime.now(UTC), drift)
    record = record.model_copy(update={"verdicts": verdicts})
    if verdicts.fairness_drift is not None and verdicts.fairness_drift.drifted:
        record = _fairness_event(contract_path, record, verdicts.fairness_drift)
    if params.skew:  # a skew asks a person, not a retrain: its violation is listed under review
        skewed = training_serving_skew(settings, contract, frame, champion, end)
        if skewed.violations:
            skewed = _skew_event(record, skewed)
            found = {
                "violations": [*verdicts.violations, *skewed.violations],
                "review": [*verdicts.review, *skewed.violations],
            }
            verdicts = verdicts.model_copy(update=found)
        record = record.model_copy(update={"verdicts": verdicts, "skew": skewed.as_record()})
    if params.evidently:
        agreement = evidently_report(
            settings, contract, lake, frame, champion, record.window, verdicts, params.policy.drift_share
        )
        record = record.model_copy(update={"evidently": agreement})
    replaced = replaced_champion_violations(earlier, champion)
    if replaced is not None:
        checked = verify_new_champion(
            settings, contract, lake, frame, champion, verdicts.violations, replaced, params.rollback_margin
        )
        if checked.needs_rollback:
            checked = _roll_back(settings, contract, checked)
        record = record.model_copy(update={"verification": checked})
    return record


def _skew_event(record: window.WindowRecord, verdict: SkewVerdict) -> SkewVerdict:
    """The skew event of a window whose served features differ from the offline store's, its id kept in the verdict."""
    event = emit_event(
        event=events.SKEW_DETECTED,
        resource=events.model_resource(record.dataset),
        payload=skew.event_payload(verdict, record.window.model_dump(), record.champion),
    )
    get_run_logger().warning("%s (event %s)", verdict.message, event.id if event else None)
    return verdict.model_copy(update={"event_id": str(event.id) if event else None})


def _fairness_event(contract_path: str, record: window.WindowRecord, fairness: FairnessDrift) -> window.WindowRecord:
    """The fairness event of a window whose served decisions drifted, its id kept in the window's record.

    Every such window emits one, whatever the contract's action: with 'review' it is how a person hears of it
    (the violation does not count toward the drift alert); with 'retrain' the alert may follow as well.
    """
    event = emit_event(
        event=events.FAIRNESS_DRIFT,
        resource=events.model_resource(record.dataset),
        payload={
            "contract": contract_path,
            "champion": record.champion,
            "window_start": record.window.start,
            "window_end": record.window.end,
            **fairness.event_payload(),
        },
    )
    return record.model_copy(update={"fairness_event_id": str(event.id) if event else None})


def _raise_alert(
    contract_path: str, record: window.WindowRecord, earlier: list[dict[str, Any]], rules: MonitorPolicy
) -> window.WindowRecord:
    """The drift event that starts the retrain, its id kept in the window's record."""
    event = emit_event(
        event=events.DRIFT_DETECTED,
        resource=events.model_resource(record.dataset),
        payload=policy.drift_event_payload(record.as_json(), earlier, contract_path, rules),
    )
    return record.model_copy(
        update={
            "event_id": str(event.id) if event else None,
            "event_occurred": event.occurred.isoformat() if event else None,
        }
    )


def _result(record: window.WindowRecord, record_uri: str) -> MonitorResult:
    verdicts, agreement = record.verdicts, record.evidently
    return MonitorResult(
        dataset=record.dataset,
        window=record.window.model_dump(),
        status=record.status,
        champion=record.champion,
        rows=record.rows,
        violations=verdicts.violations if verdicts else [],
        drifted=verdicts.drift["drifted"] if verdicts else [],
        alert=record.alert,
        event_id=record.event_id,
        report_uri=agreement.uri if agreement else None,
        agreement=agreement,
        verification=record.verification,
        record_uri=record_uri,
        fairness_drifted=verdicts.fairness_drift.drifted if verdicts and verdicts.fairness_drift else [],
        fairness_event_id=record.fairness_event_id,
        review=verdicts.review if verdicts else [],
        skew=record.skew,
    )


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
    span = window.Span(start=start.isoformat(), end=end.isoformat())
    champion = seal.champion_of(settings, contract.name)  # the sealed promotion: what the services serve
    if champion is None:
        logger.info("no champion for %s: nothing is served, nothing to monitor", contract.name)
        return MonitorResult(dataset=contract.name, window=span.model_dump(), status="no_champion")
    frame = sources.read_served(lake, start, end)
    status = policy.status_of(len(frame), params.policy)
    record = window.WindowRecord(dataset=contract.name, window=span, champion=champion, rows=len(frame), status=status)
    earlier = records.earlier_windows(lake, end)
    if record.status == "judged":
        record = _judged(settings, contract_path, contract, lake, frame, record, earlier, params)
    record = record.model_copy(update={"alert": policy.alert([*earlier, record.as_json()], params.policy)})
    if record.alert and record.alert.alert:
        record = _raise_alert(contract_path, record, earlier, params.policy)
        logger.warning("drift alert for %s v%s: %s (event %s)", contract.name, champion, record.alert, record.event_id)
    result = _result(record, records.write_window(lake, record.as_json()))
    create_markdown_artifact(
        key=f"monitor-{contract.name.replace('_', '-')}",
        markdown=artifact.markdown(record, params.policy),
        description=artifact.description(record),
    )
    return result
