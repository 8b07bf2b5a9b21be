"""Infra validation: load a version's packaged scorer in a fresh interpreter, re-score its golden records, time it.

The deploy runs ``python -m tasks.promote.infra_check TRACKING_URI NAME VERSION`` (:func:`validate_infra`): the
child loads the version's deployable package (the ``ApplicationScorer`` pyfunc, ``tasks/promote/bundle.py``)
from its model URI (nothing from the training process), scores the golden records through it and times
single-row requests, and prints one JSON line (:class:`~tasks.promote.policy.InfraMeasurement`); the parent
judges it (:func:`~tasks.promote.policy.judge_infra`).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd

from tasks.promote.policy import GOLDEN_ROWS, DeployError, InfraMeasurement, InfraReport, golden_difference, judge_infra

TIMEOUT_SECONDS = 300


def validate_infra(
    tracking_uri: str, name: str, version: str, env: dict[str, str], latency_budget_ms: float
) -> InfraReport:
    """Measure the version in a fresh interpreter and judge it; fails closed.

    A load failure, a crash, a timeout raise :class:`DeployError`; a difference above the tolerance or a latency
    over budget gives a report with verdict ``fail``.
    """
    command = [sys.executable, "-m", "tasks.promote.infra_check", tracking_uri, name, version]
    try:
        done = subprocess.run(  # noqa: S603
            command, capture_output=True, text=True, env=env, timeout=TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"infra validation of {name} v{version} did not finish in {TIMEOUT_SECONDS} s") from exc
    if done.returncode != 0:
        raise DeployError(f"infra validation of {name} v{version} failed to run: {done.stderr.strip()[-2000:]}")
    measured = InfraMeasurement.model_validate_json(done.stdout.strip().splitlines()[-1])
    return judge_infra(measured, latency_budget_ms)


def measure(tracking_uri: str, name: str, version: str) -> InfraMeasurement:
    """In the child: load the packaged scorer from the registry, compare it on the golden records, time it."""
    import mlflow

    from closedloop.registry import client
    from tasks.promote.promotion import golden

    mlflow.set_tracking_uri(tracking_uri)
    uri = (client(tracking_uri).get_model_version(name, version).tags or {}).get("scorer_uri")
    if not uri:
        raise SystemExit(f"{name} v{version} has no packaged scorer (scorer_uri tag): package it first")
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    load_seconds = time.perf_counter() - started
    record = golden(tracking_uri, name, version)
    frame = pd.DataFrame(record["rows"])
    given = {"features": "given"}
    answer = model.predict(frame, params=given)
    difference = golden_difference(answer["probability"].to_numpy(dtype="float64"), record["scores"])
    if set(answer["model_version"]) != {version}:
        raise SystemExit(f"the package of v{version} answers as {sorted(set(answer['model_version']))}")
    timings = []
    for i in range(min(len(frame), GOLDEN_ROWS)):
        t = time.perf_counter()
        model.predict(frame.iloc[[i]], params=given)
        timings.append((time.perf_counter() - t) * 1000)
    return InfraMeasurement(
        version=version,
        scorer_uri=uri,
        golden_rows=len(frame),
        max_abs_difference=difference,
        latency_p50_ms=float(np.percentile(timings, 50)),
        latency_p95_ms=float(np.percentile(timings, 95)),
        load_seconds=load_seconds,
    )


if __name__ == "__main__":
    print(measure(*sys.argv[1:4]).model_dump_json())  # noqa: T201 - the parent process reads this line
