"""`closedloop status` as a user types it: every component 'up' started, the scoring service with its readiness."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import free_port
from typer.testing import CliRunner

from cli import stack
from cli.main import app
from closedloop.settings import Settings, load_settings

runner = CliRunner()


@pytest.fixture
def scoring_service(
    settings: Settings, prefect_server: str, mlflow_server: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The scoring service started by 'up --serving' from a shell with the token, on the session's servers."""
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_URL", prefect_server.removesuffix("/api"))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_URL", f"http://127.0.0.1:{mlflow_server}")
    monkeypatch.setenv("CLOSEDLOOP_SERVING_PORT", str(free_port()))
    monkeypatch.setenv(stack.TOKEN_VARIABLE, "status-test-token")
    started = load_settings()
    stack.up(started, serving=True, only=("serving",))
    try:
        yield started
    finally:
        stack.down(started)


@pytest.mark.integration
def test_status_shows_the_scoring_service_without_the_token(
    scoring_service: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(stack.TOKEN_VARIABLE)  # another shell: the token is not exported there
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["components"]}
    assert set(rows) == {"prefect", "mlflow", "serving"}
    serving = rows["serving"]
    assert serving["state"] == "running" and serving["pid"] == stack._recorded_pid(scoring_service, "serving")
    # no champion: /readyz (no token needed) says why it cannot score yet
    assert serving["detail"].startswith("not ready: ") and "model" in serving["detail"], serving
    assert serving["address"] == f"{scoring_service.serving_url}/docs"

    text = runner.invoke(app, ["status"])
    assert f"serving    running    {serving['pid']:>8}  {scoring_service.serving_url}/docs" in text.stdout
    assert "not ready: " in text.stdout


def test_up_refuses_the_scoring_service_without_a_token(settings: Settings) -> None:
    result = runner.invoke(app, ["up", "--serving"])
    assert result.exit_code == 2
    assert "set CLOSEDLOOP_SERVING_TOKEN: the scoring service never runs without a bearer token" in result.stderr
    assert not (settings.run_dir / "serving.json").exists()  # nothing started, nothing recorded
