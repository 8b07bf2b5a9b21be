"""The data commands: the landing zone filled, and quarantined batches listed and shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
from typer.testing import CliRunner

from cli.main import app
from closedloop.lake import Lake
from closedloop.settings import Settings

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
