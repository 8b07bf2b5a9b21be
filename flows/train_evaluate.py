"""The train/evaluate flow: point-in-time training set -> XGBoost -> evaluation and gates -> registered version."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import cast

from prefect import flow, get_run_logger, runtime, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict, Field

from closedloop import events, seal
from closedloop.contract import FairnessPolicy, contract_at
from closedloop.registry import client
from closedloop.settings import load_settings
from tasks.shared.dask_cluster import dask_runner
from tasks.train import review
from tasks.train.dataset import TrainingSet
from tasks.train.evidence import GateVerdict
from tasks.train.fit import TrainingConfig, Trial, Tuning, choose, search_space
from tasks.train.gates import Gates, effective_gates, limits_record
from tasks.train.guards import GuardVerdict, RetrainGuards
from tasks.train.tasks import (
    build_training_set,
    check_retrain_guards,
    evaluate_candidate,
    record_retrain,
    register_candidate,
    train_model,
    tuning_trial,
)


class TrainParams(BaseModel):
    """What to train; Prefect renders this as the run form in the UI."""

    model_config = ConfigDict(extra="forbid")

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    cutoff: datetime | None = Field(default=None, description="use labels matured by then; empty: now")
    trigger_event_id: str | None = Field(default=None, description="id of the event that asked for this run")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tuning_trials: int = Field(
        default=0, ge=0, le=64, description="random-search trials (mapped tasks) before the final fit; 0: none"
    )
    gates: Gates = Field(default_factory=Gates)
    fairness: FairnessPolicy = Field(
        default_factory=FairnessPolicy,
        description="fairness limits that override the contract's for this run (recorded with the version)",
    )
    guards: RetrainGuards = Field(default_factory=RetrainGuards)


class TrainResult(BaseModel):
    dataset: str
    version: str | None
    eligible: bool
    metrics: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    gates: dict[str, GateVerdict] = {}
    training_rows: int = 0
    started_by: str
    event_id: str | None = None
    status: str = "trained"  # or "deferred: <why>" when a guard stopped an automatic retrain
    guards: GuardVerdict | None = None


@flow(name="tuning_search")
def tuning_search(training: TrainingSet, contract_path: str, configs: list[TrainingConfig]) -> list[Trial]:
    """The random search's trials as mapped tasks, each judged by AUC on the validation split."""
    contract = contract_at(contract_path)
    return [f.result() for f in tuning_trial.map(unmapped(training), unmapped(contract), configs)]


def _started_by(params: TrainParams) -> str:
    if params.trigger_event_id:
        return f"event:{params.trigger_event_id}"
    if runtime.deployment.id:
        scheduled = runtime.flow_run.scheduled_start_time
        return f"deployment:{runtime.deployment.name} (flow run {runtime.flow_run.id}, scheduled {scheduled})"
    return "direct call (CLI or code)"


def _review_page(tracking_uri: str, name: str, version: str, evidence_json: str, card: str) -> str:
    """The run's page for a reviewer (tasks/train/review.py), with the MLflow run and version it registered."""
    c = client(tracking_uri)
    run_id = c.get_model_version(name, version).run_id
    links = review.mlflow_links(tracking_uri, name, version, c.get_run(run_id).info.experiment_id, run_id)
    return review.training_page(name, version, json.loads(evidence_json), links, card)


def _deferred(dataset: str, guarded: GuardVerdict, started_by: str) -> TrainResult:
    """A guard held this automatic retrain back: say why in the log, in an event and in the run's state.

    The run ends Completed named "Deferred", with the reason as the state's message: the guard did its job, so
    the run is no failure (Failed or Cancelled would raise for a direct caller and fire failure alerts), and the
    name tells it apart in the UI from a run that trained and from the runs Prefect cancelled before they
    started (``CANCEL_NEW``). A direct caller still receives the ``TrainResult``: Prefect hands it the data of
    the state the flow returned.
    """
    get_run_logger().warning("retrain of %s deferred: %s", dataset, guarded.deferred)
    deferred = emit_event(
        event=events.RETRAIN_DEFERRED,
        resource=events.model_resource(dataset),
        payload={"reason": guarded.deferred, "started_by": started_by},
    )
    result = TrainResult(
        dataset=dataset,
        version=None,
        eligible=False,
        started_by=started_by,
        event_id=str(deferred.id) if deferred else None,
        status=f"deferred: {guarded.deferred}",
        guards=guarded,
    )
    return cast(TrainResult, Completed(name="Deferred", message=result.status, data=result))


def _tune(
    training: TrainingSet, contract_path: str, config: TrainingConfig, trials: int
) -> tuple[TrainingConfig, Tuning]:
    """The random search's best configuration (on the Dask cluster's workers with the dask engine)."""
    search = tuning_search
    if config.engine == "dask":  # the trials run on the Dask cluster's workers, side by side
        settings = load_settings()
        search = tuning_search.with_options(task_runner=dask_runner(settings.dask_address, settings.dask_workers))
    results = search(training, contract_path, search_space(config, trials, config.seed))
    chosen, tuning = choose(config, results)
    best = max(trial.validation_auc for trial in results)
    get_run_logger().info("tuning: %d trials, best validation AUC %.4f with %s", len(results), best, tuning.chosen)
    return chosen, tuning


@flow(name="train_evaluate")
def train_evaluate(params: TrainParams | None = None) -> TrainResult:
    """Train a challenger on matured labels, evaluate it against the gates, register it with its evidence."""
    params = params or TrainParams()
    logger = get_run_logger()
    settings = load_settings()
    contract_path = str(params.contract or settings.contract)
    contract = contract_at(contract_path)
    now = datetime.now(UTC)
    started_by = _started_by(params)
    if params.guards.enabled:
        guarded = check_retrain_guards(settings, contract, params.guards, now, runtime.flow_run.id, started_by)
        if guarded.deferred:
            return _deferred(contract.name, guarded, started_by)
    config = params.training
    training = build_training_set(settings, contract, params.cutoff or now, config)
    logger.info(
        "training set: %d rows, %d defaults, %s..%s; %d matured applications left out without their feature rows",
        training.rows,
        training.positives,
        training.window_start,
        training.window_end,
        training.coverage.left_out,
    )
    tuning = None
    if params.tuning_trials > 1:
        config, tuning = _tune(training, contract_path, config, params.tuning_trials)
    model_path = train_model(training, contract, config, settings)
    gates, fairness = effective_gates(contract, params.gates, params.fairness)
    evaluation = evaluate_candidate(training, model_path, contract, settings.mlflow_tracking_uri, gates)
    version, card, evidence_json = register_candidate(
        training,
        model_path,
        contract,
        settings.mlflow_tracking_uri,
        evaluation,
        config,
        started_by,
        now,
        tuning,
        automatic=params.guards.enabled,
        fairness=fairness,
        limits=limits_record(contract, gates, params.guards.model_dump() if params.guards.enabled else None),
        keys=seal.key_files(settings),
        flow_run_id=runtime.flow_run.id,
        prefect_ui_url=settings.prefect_ui_url,
        trigger_event_id=params.trigger_event_id,
    )
    if params.guards.enabled:
        record_retrain(settings, contract, now, runtime.flow_run.id, started_by, version)
    page = _review_page(settings.mlflow_tracking_uri, contract.name, version, evidence_json, card)
    create_markdown_artifact(
        key=f"model-card-{contract.name.replace('_', '-')}",
        markdown=page,
        description=f"{contract.name} v{version}: gates, metrics, links to MLflow and the model card",
    )
    metrics = evaluation.report.metrics or {}
    logger.info(
        "%s v%s: test ROC-AUC %s; %s; gates: %s",
        contract.name,
        version,
        f"{metrics['roc_auc']:.4f}" if "roc_auc" in metrics else "not measured",
        "eligible for promotion" if evaluation.eligible else "not eligible",
        ", ".join(f"{gate} {verdict.verdict}" for gate, verdict in evaluation.gates.items()),
    )
    trained = emit_event(
        event=events.TRAINED,
        resource={**events.model_resource(contract.name), events.ELIGIBLE_LABEL: str(evaluation.eligible).lower()},
        payload={
            "contract": contract_path,
            "version": version,
            "eligible": evaluation.eligible,
            "roc_auc": metrics.get("roc_auc"),
            "started_by": started_by,
        },
    )
    return TrainResult(
        dataset=contract.name,
        version=version,
        eligible=evaluation.eligible,
        metrics=metrics,
        intervals=evaluation.report.intervals or {},
        gates=evaluation.gates,
        training_rows=training.rows,
        started_by=started_by,
        event_id=str(trained.id) if trained else None,
    )
