"""Runs left Running by a killed command are marked crashed by the next one (closedloop/crashed_runs.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import prefect_api

from cli.console import connect
from closedloop.crashed_runs import NOTE_TAG, TAG, owned_runs
from closedloop.lake import Lake
from closedloop.processes import Owner, started_at
from closedloop.settings import Settings, load_settings
from samples.synthetic import SyntheticConfig, write_synthetic

CLI = str(Path(sys.executable).parent / "closedloop")


def test_an_owner_is_dead_once_its_pid_is_free_or_taken_by_a_later_process() -> None:
    me = Owner.current()
    assert Owner.parse(me.label) == me and not me.dead_here()
    assert Owner(me.host, me.pid, str(int(started_at(me.pid)) - 1)).dead_here()  # the pid, reused since
    child = subprocess.Popen(["true"])
    child.wait()
    assert Owner(me.host, child.pid, "").dead_here()
    assert not Owner("another-host", child.pid, "").dead_here()  # its pids say nothing here
    assert Owner.parse("not an owner") is None


def _runs_of(prefect: str, kind: str, pid: int) -> list[dict[str, object]]:
    """The Prefect flow or task runs that process ``pid`` of this host started."""
    mine = f"{TAG}:{socket.gethostname()}:{pid}:"
    found = prefect_api("POST", f"{prefect}/{kind}/filter", json={kind: {"tags": {"all_": [TAG]}}}).json()
    return [r for r in found if any(t.startswith(mine) for t in r["tags"])]


@pytest.mark.integration
def test_a_killed_ingest_and_a_killed_mlflow_run_are_marked_by_the_next_command_start(
    settings: Settings,
    prefect_server: str,
    mlflow_server: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import mlflow

    tracking = f"http://127.0.0.1:{mlflow_server}"
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_URL", prefect_server.removesuffix("/api"))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_URL", tracking)
    write_synthetic(SyntheticConfig(customers=200, months=1), Lake.of(settings.lake_uri, "credit_synthetic").landing)

    # `closedloop ingest` killed with SIGKILL once its first batch is committed, its flow and task runs Running
    ingest = subprocess.Popen([CLI, "ingest"], env={**os.environ, "CLOSEDLOOP_CRASH_AT": "batch-committed"})
    assert ingest.wait(timeout=300) == -signal.SIGKILL
    (flow_run,) = _runs_of(prefect_server, "flow_runs", ingest.pid)
    assert flow_run["state_type"] == "RUNNING" and flow_run["name"]
    assert {r["state_type"] for r in _runs_of(prefect_server, "task_runs", ingest.pid)} == {"RUNNING"}

    # an MLflow run of a process that records itself as a command does, killed with kill -9 while Running
    experiment = mlflow.MlflowClient(tracking).create_experiment(f"crashed-{uuid.uuid4().hex[:8]}")
    started = (
        "import mlflow\nfrom closedloop.crashed_runs import owned_runs\n"
        f"with owned_runs():\n    print(mlflow.start_run(experiment_id='{experiment}').info.run_id, flush=True)\n"
        "    input()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", started],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    killed_run = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    mlflow.set_tracking_uri(tracking)
    with owned_runs():  # the run of a process still alive (this one) is left alone
        live = mlflow.start_run(experiment_id=experiment)
    assert mlflow.get_run(killed_run).info.status == "RUNNING"

    # the next command marks them as it connects, before its own flow starts
    configured = load_settings()
    for key, value in configured.server_environment().items():
        monkeypatch.setenv(key, value)  # what connect() sets, put back after the test
    connect(configured)
    said = capsys.readouterr().err
    assert said.startswith("closedloop: marked crashed, their process killed: ") and said.count("\n") == 1
    assert f"prefect flow run {flow_run['name']} ({flow_run['id']})" in said and f"({killed_run})" in said

    (crashed,) = _runs_of(prefect_server, "flow_runs", ingest.pid)
    assert crashed["state_type"] == "CRASHED"
    assert crashed["state"]["message"].startswith(f"process {ingest.pid} on {socket.gethostname()} that ran it is gone")
    assert {r["state_type"] for r in _runs_of(prefect_server, "task_runs", ingest.pid)} == {"CRASHED"}
    ended = mlflow.get_run(killed_run)
    assert ended.info.status == "KILLED" and ended.info.end_time
    assert ended.data.tags[NOTE_TAG].startswith(f"process {child.pid} on ")
    assert mlflow.get_run(live.info.run_id).info.status == "RUNNING"
    mlflow.end_run()
