"""``python -m benchmarks``: results with their project figure, raw baseline and ratio, written to JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks.__main__ import app
from closedloop.settings import Settings

runner = CliRunner()


@pytest.mark.slow
def test_bench_reports_project_baseline_and_ratio(settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["generator", "--rows", "20000", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["measurements"]
    assert [r["unit"] for r in rows] == ["rows/s", "MB", "MB"]
    for row in rows:
        assert row["project"] > 0 and row["baseline"] > 0
        assert row["ratio"] == pytest.approx(row["project"] / row["baseline"], rel=1e-3)
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
    assert "| generator |" in next(tmp_path.glob("bench-*.md")).read_text()


def test_an_unknown_benchmark_is_one_line_naming_it_and_the_known_ones(settings: Settings) -> None:
    result = runner.invoke(app, ["nonsense"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "unknown benchmark(s) ['nonsense']" in result.stderr and "'generator'" in result.stderr
