"""The bench command: results with their ratios from a checkout, one clear error outside one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from closedloop.settings import Settings

runner = CliRunner()


@pytest.mark.slow
def test_bench_reports_project_baseline_and_ratio(settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "generator", "--rows", "20000", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["measurements"]
    assert [r["unit"] for r in rows] == ["rows/s", "MB", "MB"]
    for row in rows:
        assert row["project"] > 0 and row["baseline"] > 0
        assert row["ratio"] == pytest.approx(row["project"] / row["baseline"], rel=1e-3)
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
    assert "| generator |" in next(tmp_path.glob("bench-*.md")).read_text()
    assert runner.invoke(app, ["bench", "nonsense"]).exit_code == 2


def test_bench_outside_a_checkout_says_so_in_one_line(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # as installed from the wheel: no benchmarks package
    monkeypatch.delitem(sys.modules, "benchmarks.harness", raising=False)
    result = runner.invoke(app, ["bench", "generator"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("closedloop: error: the benchmarks are not part of the installed package")
    assert "source checkout" in result.stderr
