"""The train/evaluate flow: point-in-time training set -> XGBoost -> evaluation and gates -> registered version."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, runtime, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from pydantic import BaseModel, Field

from closedloop.settings import load_settings
from tasks.ingest import contract_at, utc_now
from tasks.train import Gates, build_training_set, evaluate_candidate, register_candidate, train_model, tuning_trial
from tasks.training import TUNED, TrainingConfig, search_space

TRAINED_EVENT = "closedloop.model.trained"


class TrainParams(BaseModel):
    """What to train; Prefect renders this as the run form in the UI."""

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    cutoff: datetime | None = Field(default=None, description="use labels matured by then; empty: now")
    trigger_event_id: str | None = Field(default=None, description="id of the event that asked for this run")
    gates: Gates = Field(default_factory=Gates)
    n_estimators: int = Field(default=600, ge=10, le=5000)
    max_depth: int = Field(default=4, ge=1, le=12)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    seed: int = 7
    window_days: int | None = Field(
        default=None, ge=30, description="train on applications of the last N days with matured labels; empty: all"
    )
    tuning_trials: int = Field(
        default=0, ge=0, le=64, description="random-search trials (mapped tasks) before the final fit; 0: none"
    )


class TrainResult(BaseModel):
    dataset: str
    version: str
    eligible: bool
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    gates: dict[str, dict[str, Any]]
    training_rows: int
    started_by: str
    event_id: str | None = None


def _started_by(params: TrainParams) -> str:
    if params.trigger_event_id:
        return f"event:{params.trigger_event_id}"
    if runtime.deployment.id:
        scheduled = runtime.flow_run.scheduled_start_time
        return f"deployment:{runtime.deployment.name} (flow run {runtime.flow_run.id}, scheduled {scheduled})"
    return "direct call (CLI or code)"


@flow(name="train_evaluate")
def train_evaluate(params: TrainParams | None = None) -> TrainResult:
    """Train a challenger on matured labels, evaluate it against the gates, register it with its evidence."""
    params = params or TrainParams()
    logger = get_run_logger()
    settings = load_settings()
    contract_path = str(params.contract or settings.contract)
    contract = contract_at(contract_path)
    now = utc_now()
    config = TrainingConfig(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        seed=params.seed,
        window_days=params.window_days,
    )
    training = build_training_set(settings, contract_path, params.cutoff or now, config)
    logger.info(
        "training set: %d rows, %d defaults, %s..%s",
        training.rows,
        training.positives,
        training.window_start,
        training.window_end,
    )
    tuning: list[dict[str, Any]] = []
    if params.tuning_trials > 1:
        configs = search_space(config, params.tuning_trials, params.seed)
        tuning = [f.result() for f in tuning_trial.map(unmapped(training), unmapped(contract_path), configs)]
        best = max(range(len(tuning)), key=lambda i: tuning[i]["validation_auc"])
        config = replace(config, **tuning[best]["params"])
        logger.info(
            "tuning: %d trials, best validation AUC %.4f with %s",
            len(tuning),
            tuning[best]["validation_auc"],
            tuning[best]["params"],
        )
    model_path = train_model(training, contract_path, config)
    evaluation = evaluate_candidate(training, model_path, contract_path, settings.mlflow_tracking_uri, params.gates)
    if tuning:
        evaluation["report"]["tuning"] = {"trials": tuning, "chosen": {k: getattr(config, k) for k in TUNED}}
    started_by = _started_by(params)
    version, card, _ = register_candidate(
        training, model_path, contract_path, settings.mlflow_tracking_uri, evaluation, config, started_by, now
    )
    create_markdown_artifact(
        key=f"model-card-{contract.name.replace('_', '-')}", markdown=card, description=f"{contract.name} v{version}"
    )
    report = evaluation["report"]
    result = TrainResult(
        dataset=contract.name,
        version=version,
        eligible=evaluation["eligible"],
        metrics=report.get("metrics", {}),
        intervals=report.get("intervals", {}),
        gates=evaluation["verdicts"],
        training_rows=training.rows,
        started_by=started_by,
    )
    event = emit_event(
        event=TRAINED_EVENT,
        resource={"prefect.resource.id": f"closedloop.model.{contract.name}", "prefect.resource.name": contract.name},
        payload={
            "version": version,
            "eligible": result.eligible,
            "roc_auc": result.metrics.get("roc_auc"),
            "started_by": started_by,
        },
    )
    result.event_id = str(event.id) if event else None
    return result
