"""The served deployments, run the way the Prefect UI's Run button runs them, against `closedloop up --flows`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from conftest import free_port, prefect_api

from cli import stack
from closedloop.lake import Lake
from closedloop.settings import Settings, load_settings
from samples.synthetic import SyntheticConfig, write_synthetic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One served stack (Prefect, MLflow, the flow runner) for the module's tests, in their order."""
    state = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.upper().startswith("CLOSEDLOOP_")]:
            patch.delenv(key)
        patch.setenv("CLOSEDLOOP_STATE_DIR", str(state / "state"))
        patch.setenv("CLOSEDLOOP_PREFECT_PORT", str(free_port()))
        patch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(free_port()))
        settings = load_settings()
        stack.up(settings, flows=True)
        try:
            yield settings
        finally:
            stack.down(settings)


def test_ingest_runs_from_the_ui(served: Settings) -> None:
    lake = Lake.of(served.lake_uri, "credit_synthetic")
    write_synthetic(SyntheticConfig(customers=4_000), lake.landing)  # the next test retrains on it
    api = served.prefect_api_url
    deployment = prefect_api("GET", f"{api}/deployments/name/ingest_validate/ingest-validate").json()
    assert set(deployment["parameter_openapi_schema"]["properties"]) == {"params"}  # the UI's run form
    for name in ("train_evaluate/train-evaluate", "package_deploy/package-deploy", "batch_score/batch-score"):
        assert prefect_api("GET", f"{api}/deployments/name/{name}").json()["name"]  # `up --flows` waited for all
    deploy = prefect_api("GET", f"{api}/deployments/name/package_deploy/package-deploy").json()
    assert deploy["global_concurrency_limit"]["limit"] == 1  # one promotion at a time
    run = prefect_api("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={}).json()
    state: dict[str, str] = {}
    for _ in range(240):
        state = prefect_api("GET", f"{api}/flow_runs/{run['id']}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.5)
    assert state["type"] == "COMPLETED", state
    ledger = lake.ledger_records()
    assert ledger and all(r["status"] == "accepted" for r in ledger)
    assert sum(r["rows_accepted"] for r in ledger) == sum(r["rows_in"] for r in ledger) > 0
    names = {s.name: s.state for s in stack.status(served)}
    assert names == {"prefect": "running", "mlflow": "running", "flows": "running"}


def _flow_run_pid(run_id: str) -> int:
    """The pid of the process executing a flow run (Prefect's runner gives it PREFECT__FLOW_RUN_ID)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                return int(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    raise AssertionError(f"no process runs flow run {run_id}")


def _drift_event(api: str, contract: str, occurred: datetime | None = None) -> str:
    """POST one drift event to the served stack's Prefect API; returns its id.

    ``occurred``: the event's time (now by default). The automation's debounce runs on the events' times, the
    guards' cool-down on the runs' clock: a time injected an hour on reaches past the one, not the other.

    Through the REST API rather than ``emit_event``: Prefect's in-process events worker is a process-wide
    singleton that would keep sending to this stack after it stops, and the later modules' events would be lost.
    """
    event_id = str(uuid.uuid4())
    prefect_api(
        "POST",
        f"{api}/events",
        json=[
            {
                "id": event_id,
                "occurred": (occurred or datetime.now(UTC)).isoformat(),
                "event": "closedloop.drift.detected",
                "resource": {"prefect.resource.id": "closedloop.model.credit_synthetic"},
                "payload": {"contract": contract, "features": {"income": 0.5}, "champion": None},
            }
        ],
    )
    return event_id


def _triggered(
    api: str, ids: set[str], count: int, final: bool = True, seconds: float = 600
) -> list[dict[str, object]]:
    """The train-evaluate runs started for these event ids, once there are ``count`` (and all final)."""
    train = prefect_api("GET", f"{api}/deployments/name/train_evaluate/train-evaluate").json()
    deadline = time.monotonic() + seconds
    runs: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        listed = prefect_api(
            "POST", f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [train["id"]]}}, "limit": 200}
        ).json()
        runs = [r for r in listed if (r["parameters"].get("params") or {}).get("trigger_event_id") in ids]
        ready = (
            [r for r in runs if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
            if final
            else [r for r in runs if r["state"]["type"] == "RUNNING"]
        )
        if len(ready) >= count:
            return ready
        time.sleep(0.5)
    raise AssertionError(f"{len(runs)} runs for {len(ids)} events after {seconds} s: {[r['state'] for r in runs]}")


def _versions(served: Settings, ids: set[str]) -> list[object]:
    """The registered versions started by these events."""
    from closedloop.registry import client

    return [
        v
        for v in client(served.mlflow_tracking_uri).search_model_versions("name='credit_synthetic'")
        if v.tags.get("started_by", "").removeprefix("event:") in ids
    ]


def test_twenty_drift_events_at_once_start_one_retrain(served: Settings) -> None:
    """The automation fires once for the storm (``within``: the cool-down); the one run trains."""
    from closedloop.settings import PROJECT_ROOT

    contract = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    api = served.prefect_api_url  # the data: ingested by the previous test, through its deployment
    ids = {_drift_event(api, contract) for _ in range(20)}
    runs = _triggered(api, ids, count=1, final=True)
    states = [(r["state"]["type"], r["state"]["name"]) for r in runs]
    assert states == [("COMPLETED", "Completed")], states  # one run, and it trained
    assert len(_versions(served, ids)) == 1, states


def test_twenty_drift_events_over_a_minute_within_the_cool_down_train_nothing(served: Settings) -> None:
    """Events an hour on by their clock (past the automation's window) but minutes after the retrain by the runs'.

    The automation fires once for them; the guards defer that run in seconds, by the lake's record of the last
    retrain, in a Completed state named "Deferred" that says why.
    """
    from closedloop.settings import PROJECT_ROOT
    from deployments.schedules import DRIFT_DEBOUNCE

    contract = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    api = served.prefect_api_url
    start = datetime.now(UTC) + DRIFT_DEBOUNCE
    ids = {_drift_event(api, contract, start + timedelta(seconds=3 * i)) for i in range(20)}
    runs = _triggered(api, ids, count=1, final=True)
    states = [(r["state"]["type"], r["state"]["name"]) for r in runs]
    assert states == [("COMPLETED", "Deferred")], states
    message = str(runs[0]["state"]["message"])
    assert message.startswith("deferred: cool-down: the last automatic retrain (flow run "), message
    assert "registered v" in message, message  # the previous test's retrain
    assert not _versions(served, ids)


def test_a_retrain_killed_halfway_registers_nothing(served: Settings) -> None:
    """A run from the UI is killed once its training set is built: no version, no hang of the concurrency slot.

    A run from the UI (guards off): after the storms above, the cool-down would defer a triggered one. The next
    test's triggered run finds the slot free again.
    """
    import signal

    from closedloop.registry import client
    from closedloop.settings import PROJECT_ROOT

    api = served.prefect_api_url
    contract = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    mlflow = client(served.mlflow_tracking_uri)
    before = {v.version for v in mlflow.search_model_versions("name='credit_synthetic'")}
    train = prefect_api("GET", f"{api}/deployments/name/train_evaluate/train-evaluate").json()
    created = prefect_api(
        "POST",
        f"{api}/deployments/{train['id']}/create_flow_run",
        json={"parameters": {"params": {"contract": contract}}},
    ).json()
    _run_until(api, str(created["id"]), ("RUNNING",))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # halfway: the training set is built, the model not yet registered
        filter_ = {"flow_runs": {"id": {"any_": [created["id"]]}}}
        tasks = prefect_api("POST", f"{api}/task_runs/filter", json=filter_).json()
        if any(t["name"].startswith("build_training_set") and t["state_type"] == "COMPLETED" for t in tasks):
            break
        time.sleep(0.2)
    os.kill(_flow_run_pid(str(created["id"])), signal.SIGKILL)
    final = _run_until(api, str(created["id"]), FINAL)
    assert final["type"] in ("CRASHED", "FAILED"), final
    assert {v.version for v in mlflow.search_model_versions("name='credit_synthetic'")} == before


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _run_until(api: str, run_id: str, types: tuple[str, ...], seconds: float = 300) -> dict[str, str]:
    """The flow run's state once its type is one of ``types``."""
    deadline = time.monotonic() + seconds
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = prefect_api("GET", f"{api}/flow_runs/{run_id}").json()["state"]
        if state["type"] in types:
            return state
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} still {state} after {seconds} s")


def test_a_prefect_server_restart_keeps_schedules_and_triggers(served: Settings) -> None:
    from closedloop.settings import PROJECT_ROOT

    api = served.prefect_api_url
    stack.restart(served, "prefect")
    monitor = prefect_api("GET", f"{api}/deployments/name/monitor/monitor").json()
    assert monitor["schedules"] and all(s["active"] for s in monitor["schedules"])
    scheduled: list[object] = []
    for _ in range(120):  # the scheduler service fills the next runs in again
        scheduled = prefect_api(
            "POST",
            f"{api}/flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [monitor["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
            },
        ).json()
        if scheduled:
            break
        time.sleep(0.5)
    assert scheduled, "no scheduled monitor run after the restart"
    from deployments.schedules import DRIFT_DEBOUNCE

    # two debounce windows on by the events' clock (the earlier tests' events fired the first two)
    later = datetime.now(UTC) + 2 * DRIFT_DEBOUNCE + timedelta(minutes=1)
    event = _drift_event(api, str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"), later)
    (run,) = _triggered(api, {event}, count=1, final=True, seconds=300)  # the runner reconnected too
    assert (run["state"]["type"], run["state"]["name"]) == ("COMPLETED", "Deferred")  # the storm's retrain cools
    train = prefect_api("GET", f"{api}/deployments/name/train_evaluate/train-evaluate").json()
    listed = prefect_api(
        "POST", f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [train["id"]]}}, "limit": 200}
    ).json()
    triggered = [r for r in listed if (r["parameters"].get("params") or {}).get("trigger_event_id")]
    assert len(triggered) == 3, [r["state"] for r in triggered]  # 41 drift events in the module, one run a window


def test_the_deployments_run_on_a_process_work_pool_through_a_worker(served: Settings) -> None:
    """`closedloop deploy-flows` puts the deployments on a work pool; a Prefect worker, not the runner, runs them.

    Last in the module: registering moves the served deployments onto the pool.
    """
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    api = served.prefect_api_url
    env = {**os.environ, **served.server_environment()}
    closedloop = str(Path(sys.executable).parent / "closedloop")
    done = subprocess.run(
        [closedloop, "deploy-flows", "--pool", "closedloop-process", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    registered = json.loads(done.stdout[done.stdout.index("{") :])["deployments"]
    assert set(registered) == {"ingest-validate", "train-evaluate", "package-deploy", "monitor", "batch-score"}
    pool = prefect_api("GET", f"{api}/work_pools/closedloop-process").json()
    assert pool["type"] == "process"
    train = prefect_api("GET", f"{api}/deployments/name/train_evaluate/train-evaluate").json()
    assert train["work_pool_name"] == "closedloop-process"
    # what the pool's deployments keep from the served ones: triggers (automations) and concurrency
    assert train["global_concurrency_limit"]["limit"] == 1

    log = (served.state_dir / "logs" / "worker.log").open("ab")
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "closedloop-process"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        monitor = prefect_api("GET", f"{api}/deployments/name/monitor/monitor").json()
        run = prefect_api("POST", f"{api}/deployments/{monitor['id']}/create_flow_run", json={}).json()
        state: dict[str, str] = {}
        for _ in range(480):
            current = prefect_api("GET", f"{api}/flow_runs/{run['id']}").json()
            state = current["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(0.5)
        worker_log = (served.state_dir / "logs" / "worker.log").read_text()[-3000:]
        assert state["type"] == "COMPLETED", (state.get("message"), worker_log)
        assert current["work_pool_name"] == "closedloop-process"
        workers = prefect_api("POST", f"{api}/work_pools/closedloop-process/workers/filter", json={}).json()
        assert workers and workers[0]["status"] == "ONLINE"  # the worker polled the pool and ran it
    finally:
        os.killpg(worker.pid, signal.SIGTERM)  # the worker and the flow-run processes it started, by pid
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        log.close()
