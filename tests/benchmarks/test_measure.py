"""Benchmark rows: the ratio against the raw baseline and the markdown table the report prints."""

from __future__ import annotations

import math

from benchmarks.measure import BenchReport, Measurement


def test_the_ratio_is_closedloop_over_the_baseline_rounded_in_json() -> None:
    row = Measurement("serving", "p99", "ms", 3.0, 0.7, False, "note")
    assert row.ratio == 3.0 / 0.7
    assert row.to_dict() == {
        "benchmark": "serving",
        "metric": "p99",
        "unit": "ms",
        "project": 3.0,
        "baseline": 0.7,
        "higher_is_better": False,
        "note": "note",
        "ratio": 4.286,
    }


def test_a_zero_baseline_gives_an_infinite_ratio_not_an_error() -> None:
    assert math.isinf(Measurement("drift", "verdicts", "s", 1.0, 0.0, False).ratio)


def test_the_markdown_table_has_one_row_per_measurement_with_units_and_ratio() -> None:
    report = BenchReport(
        started_at="2026-01-15T12:00:00+00:00",
        machine={"cpus": 2},
        measurements=[
            Measurement("generator", "throughput", "rows/s", 1_234_567.0, 2_469_134.0, True, "4 tables"),
            Measurement("validation", "1,000 rows", "s", 0.5, 0.25, False),
        ],
    )
    lines = report.markdown().splitlines()
    assert lines[0].startswith("| benchmark | metric | closedloop | raw baseline | ratio")
    assert lines[2] == "| generator | throughput (rows/s) | 1.23e+06 | 2.47e+06 | 0.50 | 4 tables |"
    assert lines[3] == "| validation | 1,000 rows (s) | 0.5 | 0.25 | 2.00 |  |"
    assert report.to_dict()["measurements"][1]["ratio"] == 2.0
