"""``closedloop demo``: the closed loop on the embedded default, end to end, through the served deployments.

The story, on synthetic credit data in which, from the sixth month on, incomes inflate by 40% and a downturn raises
defaults (``inflation_downturn``): the monitor sees the first in the features, a retrain learns the second.

1. the stack comes up with the flows served; a year of batches lands; the ingest deployment validates it;
2. the first champion is trained on the world before the drift (labels matured by drift start + label delay);
   its ``closedloop.model.trained`` event deploys it through the ``package-deploy`` trigger;
3. the scoring service starts and recent applicants (drifted) are replayed through ``/v1/score/batch``;
4. the monitor deployment judges each replayed window; the second violated window raises
   ``closedloop.drift.detected``; its trigger starts a guarded retrain on the labels that matured since;
5. the new version's trained event deploys it; a last window verifies the new champion (post-deploy check).

Everything runs as Prefect flow runs visible in the UI and MLflow runs and versions visible in its UI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from pydantic import SecretStr

from cli import stack
from closedloop import storage
from closedloop.settings import Settings

if TYPE_CHECKING:
    from closedloop.contract import Contract

DRIFT_MONTH = 5  # months after the first synthetic month when incomes start to inflate
BATCH = 200


class DemoError(RuntimeError):
    """A step of the loop did not happen; the message says which and where to look."""


@dataclass
class Summary:
    rows_ingested: int = 0
    rows_quarantined: int = 0
    batches_quarantined: int = 0
    versions: dict[str, str] = field(default_factory=dict)  # role -> version
    windows: list[dict[str, Any]] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)
    retrain: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] | None = None
    requests: int = 0
    failed_requests: int = 0
    wall_seconds: float = 0.0
    runs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _flow_run(deployment: str, params: dict[str, Any], timeout: float = 1800) -> Any:
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"params": params}, timeout=timeout)
    if not run.state or not run.state.is_completed():  # type: ignore[union-attr]
        state = run.state.name if run.state else "unknown"  # type: ignore[union-attr]
        raise DemoError(f"{deployment} run {run.id} ended {state}: see the Prefect UI and .closedloop/logs/flows.log")  # type: ignore[union-attr]
    return run


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")


def _champion(settings: Settings, name: str) -> str | None:
    from closedloop.registry import champion_version

    return champion_version(settings.mlflow_tracking_uri, name)


def _requests(settings: Settings, contract: Any) -> list[dict[str, Any]]:
    """Request bodies of the customers who applied in the data's last month (their history is served online)."""
    from closedloop.lake import Lake
    from samples.synthetic import last_month_applications

    apps = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url).read_offline(contract.prediction)
    spec = contract.tables[contract.prediction]
    recent = last_month_applications(apps, spec.event_time)
    fields = [contract.entity.join_key] + [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    rows = recent[fields].drop_duplicates(contract.entity.join_key)
    return [
        {
            k: (
                None if v is None or (isinstance(v, float) and np.isnan(v)) else (v.item() if hasattr(v, "item") else v)
            )
            for k, v in row.items()
        }
        for row in rows.to_dict("records")
    ]


def _replay(settings: Settings, bodies: list[dict[str, Any]], expect_version: str | None) -> tuple[int, int, set[str]]:
    """Send every body through the service in batches; returns (answered, failed, versions that answered)."""
    token = settings.serving_token.get_secret_value() if settings.serving_token else ""
    url = f"http://{settings.host}:{settings.serving_port}"
    answered = failed = 0
    versions: set[str] = set()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        if expect_version is not None:  # the service follows the champion alias within its refresh period
            _wait(
                f"the service to answer with v{expect_version}",
                lambda: client.post("/v1/score", json=bodies[0]).json().get("model_version") == expect_version,
                timeout=60,
            )
        for i in range(0, len(bodies), BATCH):
            response = client.post("/v1/score/batch", json={"applications": bodies[i : i + BATCH]})
            if response.status_code == 200:
                answers = response.json()
                answered += len(answers)
                versions.update(str(a["model_version"]) for a in answers)
            else:
                failed += len(bodies[i : i + BATCH])
    return answered, failed, versions


def _served_rows(settings: Settings, name: str, start: datetime, end: datetime) -> int:
    from closedloop.inference_log import read_window
    from closedloop.lake import Lake

    frame = read_window(Lake.of(settings.lake_uri, name, settings.s3_endpoint_url), start, end)
    return 0 if frame.empty else int((frame["variant"] != "shadow").sum())


def _monitor(settings: Settings, contract_path: str, name: str, start: datetime, end: datetime) -> dict[str, Any]:
    from closedloop.lake import Lake
    from tasks.monitor.records import history

    run = _flow_run(
        "monitor/monitor",
        {
            "contract": contract_path,
            "window_end": end.isoformat(),
            "window_minutes": (end - start).total_seconds() / 60,
            "policy": {"min_rows": 100},
        },
    )
    records = history(Lake.of(settings.lake_uri, name, settings.s3_endpoint_url), before=end)
    record = next(r for r in reversed(records) if r["window"]["end"] == end.isoformat())
    record["flow_run"] = str(run.id)
    return dict(record)


def _window(
    settings: Settings, contract_path: str, name: str, bodies: list[dict[str, Any]], version: str, summary: Summary
) -> dict[str, Any]:
    """Replay the traffic once, wait until the inference log holds it, judge the window."""
    start = datetime.now(UTC)
    answered, failed, versions = _replay(settings, bodies, version)
    summary.requests += answered + failed
    summary.failed_requests += failed

    def flushed() -> datetime | None:
        now = datetime.now(UTC)
        return now if _served_rows(settings, name, start, now) >= answered else None

    end = _wait("the inference log to flush the window", flushed, timeout=60) + timedelta(microseconds=1)
    record = _monitor(settings, contract_path, name, start, end)
    drift = record.get("drift") or {}
    window = {
        "end": record["window"]["end"],
        "champion": record["champion"],
        "rows": record["rows"],
        "answered_by": sorted(versions),
        "violations": record.get("violations", []),
        "drifted": drift.get("drifted", []),
        "fairness_drift": (record.get("fairness_drift") or {}).get("drifted", []),
        "skewed": (record.get("skew") or {}).get("skewed", []),
        "skew_sampled": (record.get("skew") or {}).get("sampled"),
        "alert": record.get("alert", {}).get("alert", False),
        "event_id": record.get("event_id"),
        "report": (record.get("evidently") or {}).get("url"),  # MLflow's page of it: opens in a browser
        "flow_run": record["flow_run"],
    }
    summary.windows.append(window)
    if record.get("verification"):
        summary.verification = {**record["verification"], "flow_run": record["flow_run"]}
    return record


def _triggered_run(settings: Settings, deployment: str, event_id: str) -> Any:
    """The flow run a trigger started for ``event_id`` (its parameters carry the id)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    def find() -> Any:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=50,
            )
        for run in runs:
            if (run.parameters.get("params") or {}).get("trigger_event_id") == event_id:
                return run
        return None

    return _wait(f"the {deployment} run triggered by event {event_id}", find, timeout=120, every=0.5)


def _finished(run_id: Any, timeout: float = 1800) -> Any:
    from prefect.client.orchestration import get_client

    def done() -> Any:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        return run if run.state and run.state.is_final() else None

    return _wait(f"flow run {run_id} to finish", done, timeout=timeout)


def _refused(settings: Settings, name: str) -> bool:
    """Fail fast when the newest version is not eligible: no trigger will deploy it, waiting is pointless."""
    from closedloop.registry import client

    versions = client(settings.mlflow_tracking_uri).search_model_versions(f"name='{name}'")
    if not versions:
        return False
    newest = max(versions, key=lambda v: int(v.version))
    if newest.tags.get("eligible") == "false":
        failed = {k.removeprefix("gate."): v for k, v in newest.tags.items() if k.startswith("gate.") and v != "pass"}
        raise DemoError(f"v{newest.version} is not eligible (gates: {failed}): its model card in MLflow says why")
    return False


DEMO_REVIEWER = "closedloop demo"


def _approve_paused(settings: Settings, say: Callable[[str], None]) -> bool:
    """Play the reviewer for deploy runs paused for approval (the production profile asks for one).

    In real use a person approves in the Prefect UI; the demo approves its own deploys and says so, and the
    approval is recorded in the version's evidence under its name like any other.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        paused = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            )
        )
    for run in paused:
        version = (run.parameters.get("params") or {}).get("version")
        say(f"approving the deploy of v{version} as '{DEMO_REVIEWER}' (run {run.name}; a person does this in the UI)")
        resume_flow_run(
            run.id,
            run_input={
                "approve": True,
                "reviewer": DEMO_REVIEWER,
                "comment": "approved by the demo itself; in real use a reviewer reads the model card first",
            },
        )
    return False  # approving is a step on the way, not what the caller waits for


def _version_started_by(settings: Settings, name: str, event_id: str) -> dict[str, str] | None:
    from closedloop.registry import client

    for version in client(settings.mlflow_tracking_uri).search_model_versions(f"name='{name}'"):
        if version.tags.get("started_by") == f"event:{event_id}":
            return {"version": str(version.version), "eligible": version.tags.get("eligible", "false")}
    return None


def run(settings: Settings, customers: int, say: Callable[[str], None]) -> Summary:
    """The whole loop; leaves the stack running."""
    from closedloop.contract import load_contract

    began = time.monotonic()
    summary = Summary()
    settings = _with_serving_token(settings, say)
    stack.up(settings, flows=True)
    contract_path = str(settings.contract)
    contract = load_contract(Path(contract_path))
    name = contract.name
    drift_start = _land_synthetic_year(settings, name, customers, say)
    _ingest(settings, contract_path, name, summary, say)
    champion = _first_champion(settings, contract, contract_path, drift_start, summary, say)
    stack.up(settings, flows=True, serving=True)
    bodies = _requests(settings, contract)
    say(f"replaying {len(bodies):,} recent applications per window through the scoring service")
    alerted = _replay_until_alert(settings, contract_path, name, bodies, champion, summary, say)
    new_champion = _retrain_on_alert(settings, name, alerted, summary, say)
    _verify(settings, contract_path, name, bodies, new_champion, summary, say)
    summary.wall_seconds = round(time.monotonic() - began, 1)
    return summary


def _with_serving_token(settings: Settings, say: Callable[[str], None]) -> Settings:
    """The settings with a scoring service token: the configured one, else one kept in the state folder."""
    if settings.serving_token is not None:
        return settings
    token_file = settings.state_dir / "serving-token"
    stack.private_folder(settings.state_dir)
    # created 0600 in one call: never, even for a moment, readable by others; a file already there is kept
    with contextlib.suppress(FileExistsError):
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    settings = settings.model_copy(update={"serving_token": SecretStr(token_file.read_text().strip())})
    say(f"scoring service token: {token_file} (export CLOSEDLOOP_SERVING_TOKEN=$(cat {token_file}))")
    return settings


def _land_synthetic_year(settings: Settings, name: str, customers: int, say: Callable[[str], None]) -> str:
    """Write a synthetic year drifting from DRIFT_MONTH on into the landing zone (unless it holds batches already).

    Returns the drift's first month (YYYY-MM).
    """
    from samples.synthetic import Scenario, SyntheticConfig, write_synthetic

    config = SyntheticConfig(customers=customers, scenario=Scenario.INFLATION_DOWNTURN)
    config = SyntheticConfig(
        customers=customers,
        scenario=Scenario.INFLATION_DOWNTURN,
        drift_start=str(config.first_month + DRIFT_MONTH),
    )
    landing = settings.landing_uri(name)
    if storage.list_objects(landing, settings.s3_endpoint_url):
        say(f"landing zone {landing} already holds batches: not generating again")
    else:
        written = write_synthetic(config, landing, settings.s3_endpoint_url)
        say(f"synthetic year ({config.scenario} from {config.drift_start}): {written.total_rows:,} rows -> {landing}")
    return str(config.drift_start)


def _ingest(settings: Settings, contract_path: str, name: str, summary: Summary, say: Callable[[str], None]) -> None:
    """Run the ingest deployment and count from the lake's ledger what it accepted and quarantined."""
    from closedloop.lake import Lake

    run_ = _flow_run("ingest_validate/ingest-validate", {"contract": contract_path})
    summary.runs["ingest"] = str(run_.id)
    ledger = Lake.of(settings.lake_uri, name, settings.s3_endpoint_url).ledger_records()
    summary.rows_ingested = sum(int(r.get("rows_accepted", 0)) for r in ledger)
    summary.rows_quarantined = sum(int(r.get("rows_rejected", 0)) for r in ledger)
    summary.batches_quarantined = sum(1 for r in ledger if r.get("status") != "accepted")
    say(f"ingested {summary.rows_ingested:,} rows; {summary.rows_quarantined:,} rows quarantined")


def _first_champion(
    settings: Settings,
    contract: Contract,
    contract_path: str,
    drift_start: str,
    summary: Summary,
    say: Callable[[str], None],
) -> str:
    """The champion in place, or the first one: trained on the world before the drift, deployed by its trigger."""
    name = contract.name
    champion = _champion(settings, name)
    if champion is None:
        drift_at = datetime.fromisoformat(f"{drift_start}-01T00:00:00+00:00")
        cutoff = drift_at + timedelta(days=contract.label.delay_days)  # every label of the world before the drift
        run_ = _flow_run("train_evaluate/train-evaluate", {"contract": contract_path, "cutoff": cutoff.isoformat()})
        summary.runs["first_training"] = str(run_.id)
        champion = _wait(
            "the first champion (trained event -> package-deploy trigger)",
            lambda: _champion(settings, name) or _refused(settings, name) or _approve_paused(settings, say),
            timeout=900,
        )
        say(f"first champion: v{champion} (trained on applications before {drift_start})")
    summary.versions["first_champion"] = str(champion)
    return str(champion)


def _replay_until_alert(
    settings: Settings,
    contract_path: str,
    name: str,
    bodies: list[dict[str, Any]],
    champion: str,
    summary: Summary,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Replay and judge windows until the monitor raises a drift event (at most three); returns that window's record."""
    for _ in range(3):
        record = _window(settings, contract_path, name, bodies, champion, summary)
        w = summary.windows[-1]
        say(
            f"window {len(summary.windows)}: {w['rows']} rows, violations {w['violations'] or 'none'}, "
            f"drifted {w['drifted'] or 'none'}, alert {w['alert']}"
        )
        if record.get("event_id"):
            return record
    raise DemoError("the monitor raised no drift alert in three windows of drifted traffic")


def _retrain_on_alert(
    settings: Settings, name: str, alerted: dict[str, Any], summary: Summary, say: Callable[[str], None]
) -> str:
    """Follow the drift event to the retrain its trigger started, and on to the new version becoming champion."""
    event_id = str(alerted["event_id"])
    summary.drift = {
        "event_id": event_id,
        "window": alerted["window"],
        "features": {c["column"]: c["score"] for c in alerted["drift"]["columns"] if c["drifted"]},
        "violations": alerted["violations"],
    }
    occurred = datetime.fromisoformat(alerted["event_occurred"]) if alerted.get("event_occurred") else None
    retrain = _triggered_run(settings, "train-evaluate", event_id)
    started = _wait("the triggered retrain to start", lambda: _started(retrain.id), timeout=120, every=0.25)
    summary.retrain = {
        "flow_run": str(retrain.id),
        "event_to_start_seconds": round((started - occurred).total_seconds(), 2) if occurred else None,
    }
    say(
        f"drift event {event_id} -> retrain run {retrain.id} started "
        f"{summary.retrain['event_to_start_seconds']} s later"
    )
    final = _finished(retrain.id)
    if not final.state.is_completed():
        raise DemoError(f"the retrain run {retrain.id} ended {final.state.name}: see the Prefect UI")
    made = _version_started_by(settings, name, event_id)
    if made is None:
        raise DemoError("the retrain run registered no version (deferred by a guard?): see its logs in the Prefect UI")
    summary.retrain.update(made)
    if made["eligible"] != "true":
        raise DemoError(f"retrained v{made['version']} is not eligible: its model card in MLflow says why")
    _wait(
        f"v{made['version']} to become champion (trained event -> package-deploy trigger)",
        lambda: _champion(settings, name) == made["version"] or _approve_paused(settings, say),
        timeout=900,
    )
    summary.versions["new_champion"] = made["version"]
    say(f"new champion: v{made['version']}")
    return made["version"]


def _verify(
    settings: Settings,
    contract_path: str,
    name: str,
    bodies: list[dict[str, Any]],
    version: str,
    summary: Summary,
    say: Callable[[str], None],
) -> None:
    """A last window served by the new champion: the monitor's post-deploy check of it."""
    _window(settings, contract_path, name, bodies, version, summary)
    w = summary.windows[-1]
    say(
        f"verification window: violations {w['violations'] or 'none'}; verdict "
        f"{(summary.verification or {}).get('verdict')}"
    )


def _started(run_id: Any) -> datetime | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    return run.start_time if run.start_time else None
