"""Shared fixtures, built up in layers: isolated settings, then real servers, then data."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from closedloop.settings import TELEMETRY_OFF, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's CLOSEDLOOP_* variables."""
    for key in list(os.environ):
        if key.upper().startswith("CLOSEDLOOP_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Local-profile settings with every port free and all state in a temporary folder."""
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_PORT", str(free_port()))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(free_port()))
    monkeypatch.setenv("CLOSEDLOOP_S3_PORT", str(free_port()))
    return load_settings()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint (moto's server) on loopback, for the whole test session."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One real Prefect test server (SQLite in a temporary folder) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One real MLflow tracking server (SQLite, local artifacts) for the session; yields its port."""
    from cli import stack

    state = tmp_path_factory.mktemp("mlflow-server")
    server = Settings(state_dir=state, mlflow_port=free_port(), prefect_port=free_port())
    stack.up(server, only=("mlflow",))
    try:
        yield server.mlflow_port
    finally:
        stack.down(server)


def prefect_api(method: str, url: str, **kwargs: object) -> httpx.Response:
    """A raw call to the Prefect REST API, retried like Prefect's own client on 503 (its SQLite database was busy)."""
    for attempt in range(20):
        response = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
        if response.status_code != 503:
            return response.raise_for_status()
        time.sleep(0.25 * (attempt + 1))
    return response.raise_for_status()
