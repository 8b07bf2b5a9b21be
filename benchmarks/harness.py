"""Benchmark harness: each named benchmark measures closedloop and a raw baseline in the same run.

A benchmark returns one or more :class:`~benchmarks.measure.Measurement` rows: the project's figure, the baseline's,
and their ratio, so results compare across machines. Sides that need their own peak memory run in a fresh spawned
process (``ru_maxrss`` is then theirs, not the harness's). Results go to JSON and a markdown table.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.drift import bench_drift
from benchmarks.fairness import bench_fairness
from benchmarks.ingest import bench_generator, bench_materialize, bench_validation
from benchmarks.lake import bench_lake
from benchmarks.measure import BenchReport, Measurement
from benchmarks.scale import bench_scale
from benchmarks.serving import bench_serving
from benchmarks.skew import bench_skew
from benchmarks.train import bench_concept_drift, bench_train

BENCHMARKS: dict[str, Callable[..., list[Measurement]]] = {
    "generator": bench_generator,
    "validation": bench_validation,
    "materialize": bench_materialize,
    "lake": bench_lake,
    "concept_drift": bench_concept_drift,
    "train": bench_train,
    "serving": bench_serving,
    "drift": bench_drift,
    "fairness": bench_fairness,
    "scale": bench_scale,
    "skew": bench_skew,
}


def run(
    names: list[str], out_dir: Path, progress: Callable[[str, int, int], object] | None = None, **options: Any
) -> tuple[BenchReport, Path]:
    """Run the named benchmarks (all when empty); write ``<out_dir>/bench-<time>.{json,md}``.

    ``progress``: told each benchmark's name, how many ran before it and how many there are.
    """
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise KeyError(f"unknown benchmark(s) {unknown}; available: {sorted(BENCHMARKS)}")
    report = BenchReport(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine={
            "python": platform.python_version(),
            "cpus": multiprocessing.cpu_count(),
            "platform": platform.platform(),
        },
    )
    chosen = names or list(BENCHMARKS)
    for done, name in enumerate(chosen):
        if progress is not None:
            progress(name, done, len(chosen))
        report.measurements.extend(BENCHMARKS[name](**options.get(name, {})))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"bench-{report.started_at.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(report.to_dict(), indent=2))
    stem.with_suffix(".md").write_text(report.markdown())
    return report, stem.with_suffix(".json")
