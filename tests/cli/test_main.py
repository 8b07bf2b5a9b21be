from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from closedloop.settings import Settings

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_contract_check_shows_what_is_derived() -> None:
    result = runner.invoke(app, ["contract", "check", str(REPO / "datasets/credit_synthetic/contract.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    derived = json.loads(result.stdout)
    assert derived["sensitive"] == ["age", "sex", "marital_status"]
    assert "postcode" in derived["excluded"] and "postcode" not in derived["model_inputs"]
    # every input the model uses, by where it comes from when a decision is scored
    origins = derived["inputs_by_origin"]
    assert sum(map(len, origins.values())) == len(derived["model_inputs"]) == 20
    assert origins["ratios"] == ["debt_to_income", "loan_to_limit"]
    assert "loan_amount" in origins["sent with the request"] and "income" in origins["stored view profiles"]
    assert derived["layout"]["outcomes"]["role"].startswith("label")
    assert derived["sensitive_read_from"]["age"] == "profiles"
    assert derived["model_input_sources"]["utilisation_mean_6m"] == {
        "name": "utilisation_mean_6m",
        "type": "float",
        "origin": "history aggregates",
        "table": "credit_history",
        "how": "mean of utilisation over the last 6 rows of credit_history",
    }


def test_contract_check_prints_every_model_input_and_each_table_s_columns() -> None:
    from closedloop.contract import load_contract
    from tasks.shared.features import feature_names

    path = REPO / "datasets/credit_synthetic/contract.yaml"
    result = runner.invoke(app, ["contract", "check", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    contract = load_contract(path)
    trained_on = feature_names(contract)  # the list the model is trained on, in its order
    assert f"  model inputs ({len(trained_on)}, in the order the model is trained on and scored with):" in lines
    numbered = [line.split()[1] for line in lines if re.match(r"^ +\d+ ", line)]
    assert numbered == trained_on
    said = {line.split()[1]: line for line in lines if re.match(r"^ +\d+ ", line)}
    assert said["income"].endswith("float    stored view profiles")
    assert said["loan_amount"].endswith("sent with the request")
    assert said["utilisation_mean_6m"].endswith("mean of utilisation over the last 6 rows of credit_history")
    assert said["debt_to_income"].endswith("ratios: loan_amount / income, computed when scored")
    for table in contract.tables:  # the headers each table's batches need
        needs = ", ".join(contract.file_columns(table).values())
        assert any(line.startswith(f"  table {table} (") and line.endswith(f"a batch needs {needs}") for line in lines)


def test_contract_check_explains_a_flat_header_less_file() -> None:
    result = runner.invoke(app, ["contract", "check", str(REPO / "datasets/german_credit/contract.yaml")])
    assert result.exit_code == 0, result.output
    assert "table applications (flat: the decisions and their label): a batch needs bad_credit, checking_status" in (
        result.stdout
    )
    assert "read from headers personal_status_sex -> sex" in result.stdout
    assert "added at ingest: event_time (as_of 1994-11-17T00:00:00+00:00), application_id (generated key)" in (
        result.stdout
    )


def test_contract_check_names_the_broken_field(tmp_path: Path) -> None:
    text = (REPO / "datasets/credit_synthetic/contract.yaml").read_text().replace("delay_days: 90", "delay_days: soon")
    bad = tmp_path / "contract.yaml"
    bad.write_text(text)
    result = runner.invoke(app, ["contract", "check", str(bad)])
    assert result.exit_code == 2
    assert "label.delay_days: Input should be a valid integer" in result.stderr


def test_status_without_state_is_explained(settings: Settings) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert f"no closedloop state at {settings.state_dir}: run 'closedloop up' first" in result.stderr


def test_unknown_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSEDLOOP_PROFLE", "production")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2 and "unknown setting(s) CLOSEDLOOP_PROFLE" in result.stderr


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "closedloop"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.integration
def test_up_status_down_as_a_user_runs_them(settings: Settings) -> None:
    env = {**os.environ}
    first = _cli("up", "--json", env=env)
    try:
        assert first.returncode == 0, first.stderr
        pids = {c["name"]: c["pid"] for c in json.loads(first.stdout)["components"]}
        second = _cli("up", "--json", env=env)
        assert {c["name"]: c["pid"] for c in json.loads(second.stdout)["components"]} == pids
        status = _cli("status", "--json", env=env)
        assert status.returncode == 0
        rows = {c["name"]: c for c in json.loads(status.stdout)["components"]}
        assert rows["prefect"]["address"] == settings.prefect_ui_url and rows["prefect"]["state"] == "running"
        assert (
            rows["mlflow"]["address"] == f"{settings.mlflow_tracking_uri}/#/experiments?workflowType=machine_learning"
        )
    finally:
        down = _cli("down", env=env)
    assert down.returncode == 0 and "stopped: mlflow, prefect" in down.stdout
    after = _cli("status", "--json", env=env)
    assert after.returncode == 1
    assert {c["state"] for c in json.loads(after.stdout)["components"]} == {"stopped"}


def test_up_on_a_taken_port_fails_clearly(settings: Settings) -> None:
    with socket.socket() as blocker:
        blocker.bind((settings.host, settings.mlflow_port))
        blocker.listen()
        result = runner.invoke(app, ["up"])
    assert result.exit_code == 2
    assert f"port {settings.mlflow_port} on 127.0.0.1 is already in use" in result.stderr
