"""Infra validation, run in a fresh interpreter: ``python -m tasks.promote.infra_check TRACKING_URI NAME VERSION CONTRACT``.

Loads the version's deployable package (the ``ApplicationScorer`` pyfunc, ``tasks/promote/bundle.py``) from its model URI
(nothing from the training process), re-scores its golden records through it and times single-row requests;
prints one JSON line: max |difference| from the training-time scores, latency p50/p95.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd


def main(tracking_uri: str, name: str, version: str, contract_path: str) -> dict[str, float | int | str]:
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
    scores = answer["probability"].to_numpy(dtype="float64")
    difference = float(np.max(np.abs(scores - np.asarray(record["scores"]))))
    if set(answer["model_version"]) != {version}:
        raise SystemExit(f"the package of v{version} answers as {sorted(set(answer['model_version']))}")
    timings = []
    for i in range(min(len(frame), 50)):
        t = time.perf_counter()
        model.predict(frame.iloc[[i]], params=given)
        timings.append((time.perf_counter() - t) * 1000)
    return {
        "version": version,
        "scorer_uri": uri,
        "golden_rows": len(frame),
        "max_abs_difference": difference,
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p95_ms": float(np.percentile(timings, 95)),
        "load_seconds": load_seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))  # noqa: T201 - the parent process reads this line
