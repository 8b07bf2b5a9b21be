"""The harness runs the named benchmarks with their options and writes the results as JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks.measure import Measurement


def _tiny(size: int = 1) -> list[Measurement]:
    return [Measurement("tiny", f"size {size}", "s", 2.0, 1.0, False)]


def test_a_run_writes_json_and_markdown_with_each_benchmarks_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(harness.BENCHMARKS, "tiny", _tiny)
    report, path = harness.run(["tiny"], tmp_path / "out", tiny={"size": 7}, generator={"rows": 1})
    assert [m.metric for m in report.measurements] == ["size 7"]
    written = json.loads(path.read_text())
    assert written["measurements"][0]["ratio"] == 2.0 and written["machine"]["cpus"] >= 1
    assert path.with_suffix(".md").read_text() == report.markdown()


def test_an_unknown_benchmark_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown benchmark\(s\) \['nonsense'\]; available: \['concept_drift'"):
        harness.run(["nonsense", "generator"], tmp_path)
    assert not tmp_path.joinpath("bench").exists() and list(tmp_path.iterdir()) == []


def test_every_benchmark_family_is_registered_under_its_command_line_name() -> None:
    assert sorted(harness.BENCHMARKS) == [
        "concept_drift",
        "drift",
        "fairness",
        "generator",
        "lake",
        "materialize",
        "scale",
        "serving",
        "skew",
        "train",
        "validation",
    ]
