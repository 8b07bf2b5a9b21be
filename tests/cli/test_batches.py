"""The data commands: the landing zone filled, quarantined batches listed and shown, batches retracted."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from cli.main import app
from closedloop.lake import Lake
from closedloop.settings import PROJECT_ROOT, Settings

runner = CliRunner()


def test_data_commands_fill_the_landing_zone(settings: Settings) -> None:
    result = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--customers",
            "1500",
            "--months",
            "3",
            "--scenario",
            "quality_bug",
            "--format",
            "mixed",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    landing = settings.state_dir / "lake" / "credit_synthetic" / "landing"
    assert payload["landing_uri"] == landing.as_uri()
    assert payload["rows"]["profiles"] == 1500 and payload["config"]["scenario"] == "quality_bug"
    assert {p.suffix for p in landing.rglob("*.*")} == {".csv", ".parquet"}

    result = runner.invoke(app, ["data", "taiwan", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"]["credit_history"] == 180_000


def test_bad_generator_options_are_explained(settings: Settings) -> None:
    result = runner.invoke(app, ["data", "synth", "--scenario", "earthquake"])
    assert result.exit_code == 2 and "'earthquake' is not a valid Scenario" in result.stderr


def test_quarantine_list_and_show_tell_what_was_rejected_and_why(settings: Settings) -> None:
    result = runner.invoke(app, ["quarantine", "list"])
    assert result.exit_code == 0 and result.stdout.strip() == "no quarantined batches"
    lake = Lake.of(settings.lake_uri, "credit_synthetic")
    rejected = pd.DataFrame({"loan_amount": ["abc"], "_source_row": [3], "_reasons": ["type(loan_amount): bad"]})
    reason = {
        "batch_id": "b1",
        "status": "partial",
        "table": "applications",
        "rows_quarantined": 1,
        "source_name": "applications-1.csv",
        "reason": None,
        "failing": {"type(loan_amount)": 1},
        "quarantined_at": datetime(2026, 1, 15, tzinfo=UTC).isoformat(),
        "replays": [],
    }
    lake.write_quarantine("b1", b"bytes", "applications-1.csv", rejected, reason, None)
    listed = runner.invoke(app, ["quarantine", "list"])
    assert listed.exit_code == 0, listed.output
    assert "b1  partial     applications          1 rows  applications-1.csv" in listed.stdout
    assert "type(loan_amount) (1)" in listed.stdout
    shown = runner.invoke(app, ["quarantine", "show", "b1", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["rejected_rows"] == [
        {"loan_amount": "abc", "_source_row": "3", "_reasons": "type(loan_amount): bad"}
    ]


def test_quarantine_show_of_an_unknown_batch_names_it(settings: Settings) -> None:
    result = runner.invoke(app, ["quarantine", "show", "nope"])
    assert result.exit_code == 2 and "no quarantined batch 'nope'" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["quarantine", "show", "../../ledger/x"],
        ["quarantine", "replay", "../x"],
        ["batch", "retract", "..", "--reason", "r"],
    ],
)
def test_a_hostile_batch_id_is_refused_in_one_line(settings: Settings, command: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "is not a batch id" in result.stderr


def _committed(lake: Lake, batch_id: str, customers: list[int], **record: object) -> None:
    """A committed credit_history batch, as ingestion leaves it in the lake."""
    from closedloop.contract import load_contract
    from closedloop.lake import arrow_types

    contract = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
    frame = pd.DataFrame(
        {
            "customer_id": customers,
            "snapshot_at": pd.Timestamp(datetime.now(UTC) - timedelta(days=3)),
            "credit_limit": 1000.0,
            "balance": 500.0,
            "utilisation": 0.5,
            "months_delinquent": 0,
            "payment_ratio": 1.0,
            "open_accounts": 2,
        }
    )
    staged = lake.staging(batch_id)
    staged.write_offline(
        "credit_history", frame, "snapshot_at", batch_id, datetime.now(UTC), arrow_types(contract, "credit_history")
    )
    rows = len(customers)
    fields = {"table": "credit_history", "status": "accepted", "rows_in": rows, "rows_accepted": rows, **record}
    lake.commit({"batch_id": batch_id, **fields, "ingested_at": datetime.now(UTC).isoformat()})


def _one_line_error(result: Result, says: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr, result.stderr


def test_batch_retract_refusals_are_one_line_with_exit_2(settings: Settings) -> None:
    lake = Lake.of(settings.lake_uri, "credit_synthetic")
    _one_line_error(runner.invoke(app, ["batch", "retract", "b1", "--json"]), "--reason is required")
    _one_line_error(runner.invoke(app, ["batch", "retract", "b1", "--reason", " "]), "--reason is required")
    _one_line_error(runner.invoke(app, ["batch", "retract", "nope", "--reason", "x"]), "no batch 'nope' in the ledger")
    lake.write_ledger({"batch_id": "q1", "status": "quarantined", "rows_accepted": 0, "reason": "not a parquet file"})
    _one_line_error(
        runner.invoke(app, ["batch", "retract", "q1", "--reason", "x", "--json"]),
        "batch q1 stored no rows (quarantined: not a parquet file): nothing to retract",
    )
    retracted = {"state": "done", "at": "2026-01-15T12:00:00+00:00", "reason": "wrong file", "archive": "a/b1"}
    lake.write_ledger({"batch_id": "b0", "status": "accepted", "rows_accepted": 3, "retracted": retracted})
    _one_line_error(
        runner.invoke(app, ["batch", "retract", "b0", "--reason", "x"]),
        "batch b0 was retracted already at 2026-01-15T12:00:00+00:00 (wrong file)",
    )
    # a batch that can be retracted, with no stack running: the flow cannot run, and says where it looked
    _committed(lake, "b1", [1, 2])
    _one_line_error(runner.invoke(app, ["batch", "retract", "b1", "--reason", "x"]), "prefect is not reachable")
    assert len(lake.read_offline("credit_history")) == 2  # nothing moved


@pytest.mark.integration
def test_batch_retract_prints_what_moved_and_what_to_do_next(
    settings: Settings, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command as an operator runs it, against a running Prefect server (one run elsewhere)."""
    from cli.batches import _retraction_text

    lake = Lake.of(settings.lake_uri, "credit_synthetic")
    _committed(lake, "b1", [100_001, 100_002, 100_003], status="partial", rows_in=4, rows_quarantined=1)
    _committed(lake, "b1-r1", [100_005], replay_of="b1")
    monkeypatch.setenv("CLOSEDLOOP_PREFECT_URL", prefect_server.removesuffix("/api"))
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "closedloop"),
            "batch",
            "retract",
            "b1",
            "--reason",
            "wrong file",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)  # only JSON on stdout
    assert {k: payload[k] for k in ("batch_id", "table", "status", "rows", "reason", "resumed")} == {
        "batch_id": "b1",
        "table": "credit_history",
        "status": "partial",
        "rows": 3,
        "reason": "wrong file",
        "resumed": False,
    }
    (path,) = payload["objects"]
    assert path.startswith("offline/credit_history/event_date=") and path.endswith("/b1.parquet")
    assert payload["archive"] == lake.archive("b1") and payload["online_views"] == {"credit_history": 0}
    assert payload["replays"] == [{"batch_id": "b1-r1", "status": "accepted", "rows_accepted": 1, "retracted": None}]
    assert payload["event_id"] and sorted(lake.read_offline("credit_history")["customer_id"]) == [100_005]

    text = _retraction_text(payload)  # what the command prints without --json
    assert "batch b1 (credit_history, partial) retracted: wrong file" in text
    assert f"moved to {lake.archive('b1')}/ (kept, never deleted)" in text
    assert "offline/credit_history: 1 file(s), 3 rows" in text
    assert "closedloop batch retract b1-r1 --reason" in text  # its replay is still stored
