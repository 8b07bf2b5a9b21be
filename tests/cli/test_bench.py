"""``closedloop bench`` hands its arguments to ``python -m benchmarks``; outside a checkout it says so in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.main import app
from closedloop.settings import Settings

runner = CliRunner()


def test_bench_passes_its_arguments_and_exit_code_through(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "bench", "nonsense", "--rows", "10"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("closedloop: error: unknown benchmark(s) ['nonsense']")
    assert done.stderr.count("\n") == 1


def test_bench_help_is_the_benchmarks_own(settings: Settings) -> None:
    done = subprocess.run([sys.executable, "-m", "cli.main", "bench", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "closedloop bench" in done.stdout and "--customers" in done.stdout


def test_bench_outside_a_checkout_says_so_in_one_line(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # as installed from the wheel: no benchmarks package
    result = runner.invoke(app, ["bench", "generator"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("closedloop: error: the benchmarks are not part of the installed package")
    assert "source checkout" in result.stderr
