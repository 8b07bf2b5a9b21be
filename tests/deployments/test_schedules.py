"""The served deployments, run the way the Prefect UI's Run button runs them, against `closedloop up --flows`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

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


def test_a_retrain_killed_halfway_registers_nothing(served: Settings) -> None:
    """The flow run's process is killed once its training set is built: no version, no alias moves, no hang."""
    import signal

    from closedloop.registry import client
    from closedloop.settings import PROJECT_ROOT

    api = served.prefect_api_url
    contract = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    event = _drift_event(api, contract)
    run = _triggered(api, {event}, count=1, final=False)[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # halfway: the training set is built, the model not yet registered
        tasks = prefect_api("POST", f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        if any(t["name"].startswith("build_training_set") and t["state_type"] == "COMPLETED" for t in tasks):
            break
        time.sleep(0.2)
    os.kill(_flow_run_pid(str(run["id"])), signal.SIGKILL)
    (final,) = _triggered(api, {event}, count=1, final=True, seconds=120)
    assert final["state"]["type"] in ("CRASHED", "FAILED"), final["state"]
    mlflow = client(served.mlflow_tracking_uri)
    assert not [v for v in mlflow.search_model_versions("name='credit_synthetic'")]  # nothing half-registered
    # the next trigger works: the next test sends twenty and expects exactly one version


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


def _drift_event(api: str, contract: str) -> str:
    """POST one drift event to the served stack's Prefect API; returns its id.

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
                "occurred": datetime.now(UTC).isoformat(),
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


def test_twenty_drift_events_at_once_start_exactly_one_retrain(served: Settings) -> None:
    """Simultaneous triggers collapse: one retrain trains, the rest are cancelled or turned away by the guards."""
    from closedloop.registry import client
    from closedloop.settings import PROJECT_ROOT

    contract = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    api = served.prefect_api_url  # the data: ingested by the previous test, through its deployment
    ids = {_drift_event(api, contract) for _ in range(20)}
    runs = _triggered(api, ids, count=20, final=True)
    assert len(runs) == 20, f"{len(runs)} runs for 20 events"
    states = sorted(r["state"]["type"] for r in runs)
    assert "FAILED" not in states and "CRASHED" not in states, states
    versions = [
        v
        for v in client(served.mlflow_tracking_uri).search_model_versions("name='credit_synthetic'")
        if v.tags.get("started_by", "").removeprefix("event:") in ids
    ]
    assert len(versions) == 1, states  # exactly one retrain; the others cancelled (CANCEL_NEW) or deferred


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
    event = _drift_event(api, str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))
    (run,) = _triggered(api, {event}, count=1, final=True, seconds=300)  # the runner reconnected too
    assert run["state"]["type"] == "COMPLETED"  # deferred by the cool-down of the previous test's retrain


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
