"""Infra validation, run in a fresh interpreter: ``python -m tasks.infra_check TRACKING_URI NAME VERSION CONTRACT``.

Loads the version from its registry URI (nothing from the training process), re-scores its golden records and
times single-row requests; prints one JSON line: max |difference| from the training-time scores, latency p50/p95.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pandas as pd


def main(tracking_uri: str, name: str, version: str, contract_path: str) -> dict[str, float | int | str]:
    import mlflow

    from closedloop.contract import load_contract
    from tasks.deploy import golden
    from tasks.training import typed_features

    started = time.perf_counter()
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.xgboost.load_model(f"models:/{name}/{version}")
    load_seconds = time.perf_counter() - started
    record = golden(tracking_uri, name, version)
    frame = pd.DataFrame(record["rows"])
    x = typed_features(frame, load_contract(contract_path))[list(model.feature_names_in_)]
    scores = model.predict_proba(x)[:, 1]
    difference = float(np.max(np.abs(scores - np.asarray(record["scores"]))))
    timings = []
    for i in range(min(len(x), 50)):
        t = time.perf_counter()
        model.predict_proba(x.iloc[[i]])
        timings.append((time.perf_counter() - t) * 1000)
    return {
        "version": version,
        "golden_rows": len(x),
        "max_abs_difference": difference,
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p95_ms": float(np.percentile(timings, 95)),
        "load_seconds": load_seconds,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))  # noqa: T201 - the parent process reads this line
