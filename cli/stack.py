"""The local stack: start, stop and inspect the Prefect server, the MLflow server and a local S3 endpoint.

``up`` starts each server as a detached process group with its log and pid file under the state
directory, waits until its health endpoint answers, and starts nothing that already runs. ``down``
stops exactly the processes ``up`` recorded, by pid (the whole process group, then waits). State lives
in the databases and folders the settings point at, so it survives ``down`` + ``up``.

The state folder holds the online store, the registries, the run databases and the scoring service's token: it is
the user's alone (0700), and what ``up``'s processes write in it is too (they run with umask 077). The token is
in the environment of the scoring service only: a flow run or a server that does not check it has no need of it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from closedloop import storage
from closedloop.processes import pid_alive
from closedloop.settings import ENV_PREFIX, Profile, Settings

TOKEN_VARIABLE = f"{ENV_PREFIX}SERVING_TOKEN"
PRIVATE_UMASK = 0o077  # files 0600, folders 0700: the state holds customers' features and the token


class StackError(RuntimeError):
    """The stack cannot be brought into the requested state; the message says why and what to do."""


@dataclass(frozen=True)
class Component:
    name: str
    port: int
    health_url: str
    ui_url: str
    command: list[str]
    env: dict[str, str]


@dataclass
class ComponentStatus:
    name: str
    state: str  # running | stopped | unhealthy | stale | foreign
    pid: int | None
    address: str
    health_url: str
    log: str
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _bin(name: str) -> str:
    """An executable of this interpreter's environment (prefect, mlflow, moto_server)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StackError(f"{path} is missing: install the project first (uv sync)")
    return str(path)


def components(settings: Settings, s3: bool = False, flows: bool = False, serving: bool = False) -> list[Component]:
    """The servers of this profile, with the exact command line and environment each one runs with."""
    base_env = settings.server_environment()
    prefect_env = {
        **base_env,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": settings.prefect_database_url,
        "PREFECT_SERVER_API_HOST": settings.host,
        "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
        "PREFECT_UI_API_URL": settings.prefect_api_url,
    }
    out = [
        Component(
            name="prefect",
            port=settings.prefect_port,
            health_url=f"{settings.prefect_api_url}/health",
            ui_url=settings.prefect_ui_url,
            command=[
                _bin("prefect"),
                "server",
                "start",
                "--host",
                settings.host,
                "--port",
                str(settings.prefect_port),
                "--analytics-off",
                "--no-background",
            ],
            env=prefect_env,
        ),
        Component(
            name="mlflow",
            port=settings.mlflow_port,
            health_url=f"{settings.mlflow_tracking_uri}/health",
            # MLflow 3 opens on its GenAI view unless told the experiments hold model training
            ui_url=f"{settings.mlflow_tracking_uri}/#/experiments?workflowType=machine_learning",
            command=[
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                settings.mlflow_backend_store_uri,
                "--artifacts-destination",
                settings.mlflow_artifacts_destination,
                "--host",
                settings.host,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
            ],
            env={
                **base_env,
                # mlflow launches uvicorn through a shell: the venv's bin must be on PATH
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                # the job runner serves GenAI evaluation jobs closedloop never submits: seven idle processes
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
        ),
    ]
    if flows:
        out.append(
            Component(
                name="flows",
                port=0,
                # healthy once the last of the served deployments (deployments/schedules.py, registered in order)
                # is known to the Prefect server
                health_url=f"{settings.prefect_api_url}/deployments/name/batch_score/batch-score",
                ui_url=f"{settings.prefect_ui_url}/deployments",
                command=[_bin("closedloop"), "serve-flows"],
                # a triggered run (drift -> retrain) starts within seconds, not at the next 10 s poll
                env={**prefect_env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"},
            )
        )
    if serving:
        # the token goes to the service's environment only; without one the component is still described, so
        # that 'status' shows a running service whether or not this shell has the token ('up' refuses to start it)
        token = {TOKEN_VARIABLE: settings.serving_token.get_secret_value()} if settings.serving_token else {}
        out.append(
            Component(
                name="serving",
                port=settings.serving_port,
                health_url=f"{settings.serving_url}/healthz",  # /healthz and /readyz need no token
                ui_url=f"{settings.serving_url}/docs",
                command=[_bin("closedloop"), "serve"],
                env={**prefect_env, **token},
            )
        )
    if s3:
        out.append(
            Component(
                name="s3",
                port=settings.s3_port,
                health_url=f"{settings.s3_local_endpoint}/moto-api/",
                ui_url=settings.s3_local_endpoint,
                command=[_bin("moto_server"), "-H", settings.host, "-p", str(settings.s3_port)],
                env=base_env,
            )
        )
    return out


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def _log_file(settings: Settings, name: str) -> Path:
    return settings.logs_dir / f"{name}.log"


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code < 400
    except httpx.HTTPError:
        return False


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _recorded_pid(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _status_of(settings: Settings, comp: Component) -> ComponentStatus:
    pid = _recorded_pid(settings, comp.name)
    log = str(_log_file(settings, comp.name))
    status = ComponentStatus(comp.name, "stopped", pid, comp.ui_url, comp.health_url, log)
    elsewhere = {"prefect": settings.prefect_url, "mlflow": settings.mlflow_url}.get(comp.name)
    if elsewhere:  # a server run elsewhere (Kubernetes, another host): it answers or not, no process of ours
        status.pid = None
        status.state = "running" if _healthy(comp.health_url) else "unreachable"
        if status.state == "unreachable":
            status.detail = f"{comp.health_url} does not answer (the {comp.name} server configured at {elsewhere})"
        return status
    if pid is not None and pid_alive(pid):
        if _healthy(comp.health_url):
            status.state = "running"
        else:
            status.state = "unhealthy"
            status.detail = f"process {pid} is alive but {comp.health_url} does not answer; see {log}"
    elif pid is not None:
        status.state = "stale"
        status.detail = f"process {pid} recorded by 'up' is gone; see {log}"
        status.pid = None
    elif _port_taken(settings.host, comp.port):
        status.state = "foreign"
        status.detail = f"port {comp.port} is in use by a process closedloop did not start"
    return status


def status(
    settings: Settings,
    s3: bool | None = None,
    flows: bool | None = None,
    serving: bool | None = None,
    readiness: bool = True,
) -> list[ComponentStatus]:
    """State of every component; the optional ones are shown when ``up`` recorded them (their pid files).

    With ``readiness``, a running scoring service also says whether it can score, and with which model.
    """
    s3 = _pid_file(settings, "s3").exists() if s3 is None else s3
    flows = _pid_file(settings, "flows").exists() if flows is None else flows
    serving = _pid_file(settings, "serving").exists() if serving is None else serving
    rows = [_status_of(settings, comp) for comp in components(settings, s3=s3, flows=flows, serving=serving)]
    for row in rows:
        if readiness and row.name == "serving" and row.state == "running":
            row.detail = _readiness(settings.serving_url)
    return rows


def _readiness(url: str) -> str:
    """What the scoring service's /readyz says: the model it serves, or why it cannot score yet."""
    try:
        answer = httpx.get(f"{url}/readyz", timeout=10.0)
        body = answer.json()
    except (httpx.HTTPError, ValueError):
        return f"{url}/readyz does not answer: the service is up but cannot say whether it can score"
    if not isinstance(body, dict):
        return f"{url}/readyz answered {answer.status_code}"
    if body.get("ready"):
        degraded = f"; degraded: {body['degraded']}" if body.get("degraded") else ""
        return f"ready: {body.get('dataset')} champion v{body.get('model_version')}{degraded}"
    return f"not ready: {body.get('reason') or answer.status_code}"


def _prepare_production(settings: Settings) -> None:
    """Create the Postgres databases and the S3 bucket the production profile relies on."""
    import psycopg

    dsn = settings.postgres_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(f"{dsn.rstrip('/')}/postgres", autocommit=True, connect_timeout=5) as conn:
            present = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in settings.postgres_databases:
                if name not in present:
                    conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise StackError(f"cannot reach Postgres at {settings.postgres_url}: {exc}".strip()) from exc
    try:
        storage.ensure_bucket(settings.s3_bucket, settings.s3_endpoint_url)
    except storage.StorageError as exc:
        raise StackError(f"cannot prepare bucket s3://{settings.s3_bucket}: {exc}") from exc


def private_folder(path: Path) -> None:
    """``path`` created 0700, or tightened to 0700 if it exists: a folder of closedloop's state is the user's alone."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _private_open(path: Path, flags: int) -> int:
    """A file descriptor on ``path``, created 0600 if missing (never readable by others, not even for a moment)."""
    return os.open(path, flags | os.O_CREAT, 0o600)


def process_environment(comp: Component) -> dict[str, str]:
    """What ``comp`` runs with: this process's environment plus its own, the token only if it is the service."""
    inherited = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
    return {**inherited, **comp.env}


def _start(settings: Settings, comp: Component) -> int:
    log_path = _log_file(settings, comp.name)
    private_folder(log_path.parent)
    env = process_environment(comp)
    with os.fdopen(_private_open(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log:
        log.write(f"\n--- closedloop up {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {' '.join(comp.command)}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 - fixed argv built from settings, no shell
            comp.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=settings.state_dir,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
    pid_file = _pid_file(settings, comp.name)
    private_folder(pid_file.parent)
    record = {"pid": proc.pid, "command": comp.command, "address": comp.ui_url, "started_at": time.time()}
    with os.fdopen(_private_open(pid_file, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        handle.write(json.dumps(record))
    return proc.pid


def _wait_healthy(settings: Settings, comp: Component, pid: int) -> None:
    deadline = time.monotonic() + settings.startup_timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            tail = _tail(_log_file(settings, comp.name))
            _pid_file(settings, comp.name).unlink(missing_ok=True)
            raise StackError(f"{comp.name} exited during start-up; last lines of its log:\n{tail}")
        if _healthy(comp.health_url):
            return
        time.sleep(0.5)
    raise StackError(
        f"{comp.name} did not answer {comp.health_url} within {settings.startup_timeout_s:.0f} s "
        f"(pid {pid}, log {_log_file(settings, comp.name)}); 'closedloop down' stops it"
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def up(
    settings: Settings,
    s3: bool = False,
    flows: bool = False,
    only: tuple[str, ...] | None = None,
    serving: bool = False,
) -> list[ComponentStatus]:
    """Start what is not running yet and wait until everything answers; idempotent.

    Order: the S3 endpoint (production servers write to it), then Prefect and MLflow in parallel, then the
    flow runner (it registers its deployments with the Prefect server).
    """
    if serving and settings.serving_token is None:
        raise StackError("set CLOSEDLOOP_SERVING_TOKEN: the scoring service never runs without a bearer token")
    private_folder(settings.state_dir)
    for folder in (settings.logs_dir, settings.run_dir, settings.prefect_home, settings.state_dir / "mlflow"):
        private_folder(folder)
    comps = [c for c in components(settings, s3=s3, flows=flows, serving=serving) if only is None or c.name in only]
    comps.sort(key=lambda c: {"s3": 0, "flows": 2, "serving": 3}.get(c.name, 1))
    started: list[tuple[Component, int]] = []
    waiting: list[tuple[Component, int]] = []
    prepared = settings.profile is not Profile.PRODUCTION
    current = {comp.name: _status_of(settings, comp) for comp in comps}
    for comp in comps:  # check every port before starting anything
        if current[comp.name].state == "foreign":
            raise StackError(
                f"cannot start {comp.name}: port {comp.port} on {settings.host} is already in use by another "
                f"process; stop it or choose another port with CLOSEDLOOP_{comp.name.upper()}_PORT"
            )
    try:
        for comp in comps:
            state, pid = current[comp.name].state, current[comp.name].pid
            if state == "running":
                continue
            if state == "unhealthy" and pid is not None:
                waiting.append((comp, pid))  # still starting (a concurrent 'up')
                continue
            if comp.name in ("s3", "flows", "serving"):  # these need the others running first
                for other, other_pid in waiting:
                    _wait_healthy(settings, other, other_pid)
                waiting.clear()
                pid = _start(settings, comp)
                started.append((comp, pid))
                _wait_healthy(settings, comp, pid)
                continue
            if not prepared:
                _prepare_production(settings)
                prepared = True
            pid = _start(settings, comp)
            started.append((comp, pid))
            waiting.append((comp, pid))
        for comp, pid in waiting:  # the servers start in parallel: wait for all of them
            _wait_healthy(settings, comp, pid)
    except BaseException:
        for comp, _pid in started:
            _stop(settings, comp.name)
        raise
    return status(settings, s3=s3 or None, flows=flows or None, serving=serving or None)


def _stop(settings: Settings, name: str, timeout_s: float = 20.0) -> bool:
    pid = _recorded_pid(settings, name)
    path = _pid_file(settings, name)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    stopped = False
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # up started each server as the leader of its own group
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _group_alive(pid):
            time.sleep(0.2)
        if _group_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            time.sleep(0.2)
        stopped = True
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    path.unlink(missing_ok=True)
    return stopped


def restart(settings: Settings, name: str) -> list[ComponentStatus]:
    """Stop one component by its recorded pid and start it again (the others keep running)."""
    _stop(settings, name)
    return up(settings, only=(name,))


def _group_alive(pgid: int) -> bool:
    """True while any process of the group (the server or a worker it forked) is still running."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().split(")")[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def down(settings: Settings) -> list[str]:
    """Stop every process 'up' recorded; returns the names of the components it stopped."""
    if not settings.run_dir.exists():
        return []
    stopped = []
    for path in sorted(settings.run_dir.glob("*.json")):
        if _stop(settings, path.stem):
            stopped.append(path.stem)
    return stopped


def require_running(settings: Settings, names: tuple[str, ...] = ("prefect", "mlflow")) -> None:
    """Fail with a clear message when a server the caller needs is not answering."""
    if not settings.state_dir.exists():
        raise StackError(f"no closedloop state at {settings.state_dir}: run 'closedloop up' first")
    by_name = {s.name: s for s in status(settings, readiness=False)}
    for name in names:
        current = by_name[name]
        if current.state != "running":
            hint = current.detail or "run 'closedloop up'"
            raise StackError(f"{name} is not reachable at {current.address} ({current.state}): {hint}")
