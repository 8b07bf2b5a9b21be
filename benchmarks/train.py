"""Training benchmarks: quality recovered by retraining after a concept drift, and the whole train path's time."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.measure import Measurement, free_port

WINDOW_DAYS = 210  # the concept-drift study's "fresh data": matured labels since the downturn began


def bench_concept_drift(customers: int = 48_000) -> list[Measurement]:
    """Quality, not speed: a downturn (concept drift) lowers the champion's AUC; retraining on fresh data recovers it.

    Two years of synthetic data, the downturn from the second year on, ingested through the same tasks as the flow.
    The champion is trained on what had matured when the drift began; the retrained model on what had matured
    nine months later. Both score the same later window of applications, which neither has seen.
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.settings import PROJECT_ROOT, load_settings
    from tasks.shared.features import EVENT_TIMESTAMP
    from tasks.train.dataset import load_training
    from tasks.train.fit import TrainingConfig
    from tasks.train.tasks import build_training_set, load_model, train_model

    config = TrainingConfig()
    with tempfile.TemporaryDirectory(prefix="closedloop-bench-") as tmp:
        settings = load_settings(state_dir=Path(tmp))
        contract = contract_at(str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml"))
        _ingest_two_years_with_downturn(settings, contract, Lake.of(settings.lake_uri, contract.name), customers)

        def fit(cutoff: datetime, window_days: int | None = None) -> Any:
            window = config.model_copy(update={"window_days": window_days})
            return load_model(
                train_model.fn(build_training_set.fn(settings, contract, cutoff, window), contract, config)
            )

        champion = fit(datetime(2025, 1, 1, tzinfo=UTC))  # labels matured before the downturn
        # nine months later, on the applications whose labels matured since the downturn began
        retrained = fit(datetime(2025, 10, 1, tzinfo=UTC), window_days=WINDOW_DAYS)
        everything_since = fit(datetime(2025, 10, 1, tzinfo=UTC))
        everything = build_training_set.fn(settings, contract, datetime(2026, 1, 1, tzinfo=UTC), config)
        data = load_training(everything, contract)
        when, x, y = data.frame[EVENT_TIMESTAMP], data.features, data.labels

        def auc(model: Any, start: str, end: str) -> tuple[float, int]:
            rows = ((when >= pd.Timestamp(start, tz="UTC")) & (when < pd.Timestamp(end, tz="UTC"))).to_numpy()
            return float(roc_auc_score(y[rows], model.predict_proba(x[rows])[:, 1])), int(rows.sum())

        before, before_rows = auc(champion, "2024-10-01", "2025-01-01")
        drifted, drifted_rows = auc(champion, "2025-08-01", "2025-09-16")
        recovered, _ = auc(retrained, "2025-08-01", "2025-09-16")
        mixed, _ = auc(everything_since, "2025-08-01", "2025-09-16")
    return [
        Measurement(
            "concept_drift",
            f"champion ROC-AUC, downturn window vs the quarter before it ({drifted_rows:,} vs {before_rows:,} rows)",
            "ROC-AUC",
            drifted,
            before,
            True,
            "champion trained on labels matured by 2025-01-01; the downturn starts 2025-01",
        ),
        Measurement(
            "concept_drift",
            f"retrained vs champion on the same downturn window ({drifted_rows:,} applications, 2025-08-01..09-15)",
            "ROC-AUC",
            recovered,
            drifted,
            True,
            f"retrained on the last {WINDOW_DAYS} days of labels matured by 2025-10-01 (all history: "
            f"{mixed:.3f}); neither model saw the window",
        ),
    ]


def bench_train(customers: int = 150_000, data: str | None = None) -> list[Measurement]:
    """The whole train path against a bare ``xgboost`` fit of the same matrix with the same parameters.

    The data is generated and ingested first (not timed); with ``data``, into that folder, and a later run with
    the same number of customers reuses it (1.4M customers take a quarter of an hour to ingest here).
    Timed: the point-in-time training set through the FeatureService, the fit, the evaluation (metrics with
    bootstrap intervals, cost threshold, calibration, segments, fairness, SHAP, behavioural tests, plots) and
    the MLflow logging and registration on a real tracking server. The bare fit is the same ``fit_model`` call
    on the matrix the flow trained on.
    """
    import numpy as np

    from cli import stack
    from closedloop.contract import contract_at
    from closedloop.lake import Lake
    from closedloop.settings import PROJECT_ROOT, load_settings
    from tasks.shared.features import monotone_constraints
    from tasks.train import plots
    from tasks.train.dataset import load_training
    from tasks.train.fit import TrainingConfig, fit_model

    config = TrainingConfig()
    with contextlib.ExitStack() as cleanup:
        temporary = None if data else cleanup.enter_context(tempfile.TemporaryDirectory(prefix="closedloop-bench-"))
        folder = Path(data or str(temporary))
        settings = load_settings(state_dir=folder, mlflow_port=free_port(), prefect_port=free_port())
        contract = contract_at(str(PROJECT_ROOT / "datasets" / "credit_synthetic" / "contract.yaml"))
        lake = Lake.of(settings.lake_uri, contract.name)
        now = _ingested(folder, customers, bool(data), settings, contract, lake)
        stack.up(settings, only=("mlflow",))
        try:
            import mlflow  # noqa: F401  warm-up: imports and first calls are paid by neither side

            rng = np.random.default_rng(0)
            plots.roc_curve_png(rng.integers(0, 2, 100), rng.random(100))
            training, stages, ours = _timed_train_path(settings, contract, config, now)
            matrix = load_training(training, contract)
            x, y = matrix.features, matrix.labels
            train, validation = matrix.split("train"), matrix.split("validation")
            constraints = monotone_constraints(contract)
            started = time.perf_counter()
            fit_model(x[train], y[train], x[validation], y[validation], config, constraints)
            bare = time.perf_counter() - started
        finally:
            stack.down(settings)
    breakdown = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
    return [
        Measurement(
            "train",
            f"train path on {training.rows:,} matured applications x {x.shape[1]} features",
            "s",
            ours,
            bare,
            False,
            f"{breakdown}; baseline: the bare fit of the same matrix",
        )
    ]


def _ingest_two_years_with_downturn(settings: Any, contract: Any, lake: Any, customers: int) -> None:
    """Two years of synthetic applications, a downturn from 2025-01 on, ingested through the flow's own tasks."""
    from samples.synthetic import Scenario, SyntheticConfig, write_synthetic
    from tasks.ingest.tasks import earliest_new_events, find_batches, ingest_batch, materialize_features

    write_synthetic(
        SyntheticConfig(
            customers=customers, start="2024-01", months=24, scenario=Scenario.CONCEPT_DRIFT, drift_start="2025-01"
        ),
        lake.landing,
    )
    now = datetime.now(UTC)
    outcomes = [ingest_batch.fn(ref, contract, lake, now) for ref in find_batches([], lake.landing, contract, None)]
    materialize_features.fn(settings, contract, earliest_new_events(outcomes, contract), now)


def _timed_train_path(settings: Any, contract: Any, config: Any, now: datetime) -> tuple[Any, dict[str, float], float]:
    """The training set, the seconds of each stage of the train path (retrieval, fit, evaluation, mlflow), the total."""
    from tasks.train.gates import Gates
    from tasks.train.tasks import build_training_set, evaluate_candidate, register_candidate, train_model

    stages: dict[str, float] = {}
    started = time.perf_counter()
    training = build_training_set.fn(settings, contract, now, config)
    stages["retrieval"] = time.perf_counter() - started
    model_path = train_model.fn(training, contract, config)
    stages["fit"] = time.perf_counter() - started - sum(stages.values())
    evaluation = evaluate_candidate.fn(training, model_path, contract, settings.mlflow_tracking_uri, Gates())
    stages["evaluation"] = time.perf_counter() - started - sum(stages.values())
    register_candidate.fn(
        training, model_path, contract, settings.mlflow_tracking_uri, evaluation, config, "bench", now
    )
    stages["mlflow"] = time.perf_counter() - started - sum(stages.values())
    return training, stages, time.perf_counter() - started


def _ingested(folder: Path, customers: int, kept: bool, settings: Any, contract: Any, lake: Any) -> datetime:
    """When ``customers`` were ingested into ``folder``: now, or a previous run's time if it left the same data."""
    from samples.synthetic import SyntheticConfig, write_synthetic
    from tasks.ingest.tasks import find_batches, ingest_batch, materialize_features

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "bench-train.json"
    prepared = json.loads(marker.read_text()) if marker.exists() else {}
    if prepared.get("customers") == customers:
        return datetime.fromisoformat(prepared["ingested_at"])
    if prepared or (kept and any(folder.iterdir())):
        raise RuntimeError(f"{folder} holds other data: give an empty or new folder")
    write_synthetic(SyntheticConfig(customers=customers, start="2025-01", months=12), lake.landing)
    now = datetime.now(UTC)
    for ref in find_batches([], lake.landing, contract, None):
        ingest_batch.fn(ref, contract, lake, now)
    materialize_features.fn(settings, contract, {}, now)  # the repo only: training reads the offline store
    marker.write_text(json.dumps({"customers": customers, "ingested_at": now.isoformat()}))
    return now
