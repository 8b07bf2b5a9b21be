"""The local stack against real servers: Prefect and MLflow processes started and stopped by pid."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from conftest import prefect_api

from cli import stack
from closedloop.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().split(")")[-1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


TOKEN = f"token-{uuid.uuid4().hex}"


@pytest.fixture
def running(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The stack up, started from a shell where the serving token is exported (as the demo suggests)."""
    monkeypatch.setenv(stack.TOKEN_VARIABLE, TOKEN)
    tokened = load_settings()
    stack.up(tokened)
    try:
        yield tokened
    finally:
        stack.down(tokened)


def test_up_is_idempotent_and_private_down_leaves_nothing_and_state_survives(running: Settings) -> None:
    settings = running
    first = {s.name: s.pid for s in stack.status(settings)}
    assert all(s.state == "running" for s in stack.status(settings))
    _assert_private_and_without_the_token(settings, TOKEN)

    # a second 'up' starts nothing new
    again = {s.name: s.pid for s in stack.up(settings)}
    assert again == first

    # put state in both servers: a Prefect flow run and variable, an MLflow run and registered model
    api = settings.prefect_api_url
    flow_id = prefect_api("POST", f"{api}/flows/", json={"name": "survives-restart"}).json()["id"]
    run_id = prefect_api("POST", f"{api}/flow_runs/", json={"flow_id": flow_id, "name": "before-restart"}).json()["id"]
    prefect_api("POST", f"{api}/variables/", json={"name": "drift_threshold", "value": 0.25})
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.create_experiment("restart-check")
    mlflow_run = client.create_run(experiment).info.run_id
    client.log_metric(mlflow_run, "auc", 0.81)
    client.create_registered_model("credit-risk-restart")

    stopped = stack.down(settings)
    assert sorted(stopped) == ["mlflow", "prefect"]
    for pid in first.values():
        assert pid is not None and not _alive(pid) and _group_members(pid) == []
    assert all(s.state == "stopped" for s in stack.status(settings))

    restarted = {s.name: s.pid for s in stack.up(settings)}
    assert set(restarted.values()).isdisjoint(first.values())
    assert prefect_api("GET", f"{api}/flow_runs/{run_id}").json()["name"] == "before-restart"
    assert prefect_api("GET", f"{api}/variables/name/drift_threshold").json()["value"] == 0.25
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    assert client.get_run(mlflow_run).data.metrics["auc"] == 0.81
    assert client.get_registered_model("credit-risk-restart").name == "credit-risk-restart"
    assert (settings.logs_dir / "prefect.log").stat().st_size > 0


def _environment_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        pairs = [item.decode(errors="replace") for item in handle.read().split(b"\0") if b"=" in item]
    return dict(pair.split("=", 1) for pair in pairs)


def _assert_private_and_without_the_token(settings: Settings, token: str) -> None:
    """State folder 0700 and what the servers wrote in it 0600; the token in no server nor worker they forked."""
    recorded = [stack._recorded_pid(settings, name) for name in ("prefect", "mlflow")]
    processes = [member for pid in recorded if pid is not None for member in _group_members(pid)]
    assert len(processes) >= 2
    for pid in processes:
        environment = _environment_of(pid)
        assert stack.TOKEN_VARIABLE not in environment
        assert not any(token in value for value in environment.values()), f"process {pid} holds the token"
    state = settings.state_dir
    assert {"prefect.db", "mlflow.db", "prefect.log", "mlflow.log", "prefect.json"} <= {
        path.name for path in state.rglob("*")
    }
    modes = {str(path.relative_to(state)): path.stat().st_mode & 0o777 for path in [state, *state.rglob("*")]}
    assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}
    assert modes["."] == 0o700 and modes["mlflow/mlflow.db"] == 0o600 and modes["prefect/prefect.db"] == 0o600


def test_only_the_scoring_service_is_given_the_token(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exported in the shell (as the demo suggests) or not: the flow runner and the servers run without it."""
    monkeypatch.setenv(stack.TOKEN_VARIABLE, "exported-token")
    comps = stack.components(load_settings(), s3=True, flows=True, serving=True)
    everyone = {comp.name: stack.process_environment(comp) for comp in comps}
    assert set(everyone) == {"prefect", "mlflow", "flows", "serving", "s3"}
    for name, environment in everyone.items():
        holds = [key for key, value in environment.items() if "exported-token" in value]
        assert holds == ([stack.TOKEN_VARIABLE] if name == "serving" else []), name


def test_a_taken_port_is_reported_and_nothing_starts(settings: Settings) -> None:
    with socket.socket() as blocker:
        blocker.bind((settings.host, settings.prefect_port))
        blocker.listen()
        with pytest.raises(
            stack.StackError, match=rf"port {settings.prefect_port} .* already in use .*CLOSEDLOOP_PREFECT_PORT"
        ):
            stack.up(settings)
        states = {s.name: s.state for s in stack.status(settings)}
    assert states == {"prefect": "foreign", "mlflow": "stopped"}
    assert list(settings.run_dir.glob("*.json")) == []


def test_unreachable_servers_and_missing_state_are_explained(settings: Settings) -> None:
    with pytest.raises(stack.StackError, match=rf"no closedloop state at {settings.state_dir}: run 'closedloop up'"):
        stack.require_running(settings)
    settings.state_dir.mkdir(parents=True)
    with pytest.raises(stack.StackError, match=rf"prefect is not reachable at {settings.prefect_ui_url} \(stopped\)"):
        stack.require_running(settings)


def test_a_server_that_dies_at_start_up_shows_its_log(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSEDLOOP_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1")
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "production")
    broken = load_settings()
    with pytest.raises(stack.StackError, match="cannot reach Postgres at postgresql://nobody@127.0.0.1:1"):
        stack.up(broken)
    assert list(broken.run_dir.glob("*.json")) == []


@pytest.fixture
def production(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Production profile on this machine's Postgres and a moto S3 endpoint started by 'up --s3'."""
    import psycopg

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg.Error as exc:  # .ci/run starts Postgres; a developer machine may not run it
        pytest.skip(f"Postgres is not running on 127.0.0.1:5432 ({exc})")
    prefix = f"cltest_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CLOSEDLOOP_PROFILE", "production")
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_PREFIX", prefix)
    monkeypatch.setenv("CLOSEDLOOP_S3_ENDPOINT_URL", settings.s3_local_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    prod = load_settings()
    try:
        yield prod
    finally:
        stack.down(prod)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            for name in prod.postgres_databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_production_profile_runs_on_postgres_and_s3(production: Settings) -> None:
    import boto3
    import psycopg
    from mlflow import MlflowClient

    rows = {s.name: s for s in stack.up(production, s3=True)}
    assert {name: s.state for name, s in rows.items()} == {"s3": "running", "prefect": "running", "mlflow": "running"}
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert set(production.postgres_databases) <= names
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{production.database_prefix}_prefect") as conn:
        assert conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run'"
        ).fetchone() == (1,)

    client = MlflowClient(tracking_uri=production.mlflow_tracking_uri)
    run = client.create_run(client.create_experiment("prod-check"))
    client.log_text(run.info.run_id, "evidence", "evidence.txt")
    s3 = boto3.client("s3", endpoint_url=production.s3_endpoint_url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=production.s3_bucket).get("Contents", [])]
    assert any(key.startswith("mlflow/") and key.endswith("evidence.txt") for key in keys)
