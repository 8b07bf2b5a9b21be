"""Every error is one line on stderr with exit code 2, checked before a flow starts; --json keeps stdout JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from cli.batches import exit_if_all_quarantined
from cli.console import JsonFlag, Shell, debugging, emit
from cli.main import app
from closedloop.settings import Settings

runner = CliRunner()


def _one_line(result: Result, says: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("closedloop: error: ") and says in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["train"], ["ingest"], ["deploy", "3"], ["quarantine", "list"]])
def test_a_missing_contract_is_refused_before_anything_starts(settings: Settings, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--contract", "nope.yaml"])
    _one_line(result, "nope.yaml: cannot read contract (No such file or directory)")
    assert "give an existing contract with --contract" in result.stderr


def test_a_contract_that_does_not_parse_is_named(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "contract.yaml"
    bad.write_text("name: [unclosed\n")
    _one_line(runner.invoke(app, ["train", "--contract", str(bad)]), str(bad))


def test_a_missing_ingest_source_is_refused(settings: Settings) -> None:
    _one_line(runner.invoke(app, ["ingest", "no/such.csv"]), "no/such.csv: no such file or folder")


def test_score_input_is_read_and_parsed_first(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOSEDLOOP_SERVING_TOKEN", "t")
    _one_line(runner.invoke(app, ["score", "@missing.json"]), "missing.json: cannot read the application")
    text = tmp_path / "a.json"
    text.write_text("income=3\n")
    _one_line(runner.invoke(app, ["score", f"@{text}", "--json"]), f"{text} is not JSON (Expecting value: line 1")
    _one_line(runner.invoke(app, ["score", "-"], input="{"), "stdin is not JSON")


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["deploy", "--strategy"], "Option '--strategy' requires an argument. (see 'closedloop deploy --help')"),
        (["quarantine", "replay"], "Missing argument 'batches'. (see 'closedloop quarantine replay --help')"),
        (["trian"], "No such command 'trian'. Did you mean 'train'? (see 'closedloop --help')"),
        (["data", "synth", "--customers", "x"], "Invalid value for '--customers'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help_to_read(command: list[str], says: str) -> None:
    _one_line(runner.invoke(app, command, prog_name="closedloop"), says)


def _failing_app() -> typer.Typer:
    """A command of the shell that meets an error nobody foresaw."""
    shell = typer.Typer(cls=Shell)

    @shell.callback()
    def _top(debug: bool = typer.Option(False, "--debug")) -> None:
        debugging(debug)

    @shell.command()
    def lookup() -> None:
        {}["income"]

    return shell


def test_an_unexpected_error_is_one_line_with_its_type_and_debug_shows_the_traceback() -> None:
    _one_line(runner.invoke(_failing_app(), ["lookup"]), "unexpected KeyError: 'income' (run 'closedloop --debug")
    shown = runner.invoke(_failing_app(), ["--debug", "lookup"])
    assert shown.exit_code == 2
    assert "Traceback (most recent call last)" in shown.stderr and 'in lookup\n    {}["income"]' in shown.stderr
    assert (
        shown.stderr.strip().splitlines()[-1]
        == "closedloop: error: unexpected KeyError: 'income' (the traceback is above)"
    )


def test_json_keeps_stdout_for_the_json_alone() -> None:
    shell = typer.Typer(cls=Shell)

    @shell.command()
    def chatty(as_json: JsonFlag = False) -> None:
        sys.stdout.write("Materializing 2 feature views\n")  # a library's progress line
        emit({"rows": 3}, as_json, "3 rows")

    @shell.command()
    def other() -> None: ...

    quiet = runner.invoke(shell, ["chatty", "--json"])
    assert quiet.exit_code == 0 and json.loads(quiet.stdout) == {"rows": 3}
    assert quiet.stderr == "Materializing 2 feature views\n"
    plain = runner.invoke(shell, ["chatty"])  # without --json nothing moves
    assert plain.stdout == "Materializing 2 feature views\n3 rows\n"


def _outcome(status: str) -> SimpleNamespace:
    """A batch's outcome as ingest reports it (tasks/ingest/batch.py BatchOutcome), by its status."""
    return SimpleNamespace(batch_id=f"b-{status}", status=status)


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["quarantined", "quarantined", "duplicate"], 3),  # nothing new stored
        (["quarantined", "partial"], 0),  # some rows stored: quarantine did its job
        (["quarantined", "accepted"], 0),
        (["duplicate"], 0),  # nothing new: nothing to report
        ([], 0),
    ],
)
def test_an_ingest_that_stored_nothing_exits_3(
    statuses: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    if code == 0:
        exit_if_all_quarantined([_outcome(s) for s in statuses])
        return
    with pytest.raises(typer.Exit) as raised:
        exit_if_all_quarantined([_outcome(s) for s in statuses])
    assert raised.value.exit_code == 3
    assert (
        "all 2 new batch(es) quarantined, nothing stored: 'closedloop quarantine list' says why"
        in capsys.readouterr().err
    )
