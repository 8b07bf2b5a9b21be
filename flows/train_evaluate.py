"""The train/evaluate flow: point-in-time training set -> XGBoost -> evaluation and gates -> registered version."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, runtime, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel, Field

from closedloop import events
from closedloop.contract import contract_at
from closedloop.lake import Lake
from closedloop.registry import champion_version, client, read_evidence
from closedloop.settings import load_settings
from tasks.shared.distributed import dask_runner
from tasks.shared.features import EVENT_TIMESTAMP
from tasks.train.fit import TUNED, Gates, TrainingConfig, TrainingDataError, entity_frame, search_space

# tasks.train.tasks (Feast, SHAP, Fairlearn) is imported inside the flow, after the guards: a triggered run is
# RUNNING, and its guards decided, in seconds instead of after the 15 s it takes to import the training stack

AUTOMATIC_TAG = "closedloop.automatic_retrain"  # on versions registered by a guarded (automatic) run


class RetrainGuards(BaseModel):
    """Checks before an automatic retrain; the drift trigger and the weekly schedule turn them on."""

    enabled: bool = Field(default=False, description="check the guards before training (off for manual runs)")
    cooldown_minutes: float = Field(
        default=60, ge=0, description="no automatic retrain within this long after the last automatic one"
    )
    max_per_day: int = Field(default=4, ge=1, description="automatic retrains in the last 24 hours, at most")
    min_new_labels: int = Field(
        default=200,
        ge=1,
        description="applications with a matured label made after the champion's training window ended, at least",
    )


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
    guards: RetrainGuards = Field(default_factory=RetrainGuards)
    engine: Literal["local", "dask"] = Field(
        default="local",
        description="local: XGBoost in the flow's process; dask: xgboost.dask on CLOSEDLOOP_DASK_ADDRESS "
        "(or a LocalCluster) for a training set one worker cannot hold",
    )


@flow(name="tuning_search")
def tuning_search(training: Any, contract_path: str, configs: list[TrainingConfig]) -> list[dict[str, Any]]:
    """The random search's trials as mapped tasks, each judged by AUC on the validation split."""
    from tasks.train.tasks import tuning_trial

    return [f.result() for f in tuning_trial.map(unmapped(training), unmapped(contract_path), configs)]


class TrainResult(BaseModel):
    dataset: str
    version: str | None
    eligible: bool
    metrics: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    gates: dict[str, dict[str, Any]] = {}
    training_rows: int = 0
    started_by: str
    event_id: str | None = None
    status: str = "trained"  # or "deferred: <why>" when a guard stopped an automatic retrain
    guards: dict[str, Any] | None = None


@task(name="retrain_guards", cache_policy=NO_CACHE)
def check_guards(contract_path: str, guards: RetrainGuards, now: datetime) -> dict[str, Any]:
    """Cool-down, daily budget and label coverage of the drifted period; ``deferred`` names the first that fails."""
    settings = load_settings()
    contract = contract_at(contract_path)
    c = client(settings.mlflow_tracking_uri)
    try:  # only automatic retrains count: a data scientist's manual run does not start the cool-down
        created = [
            int(v.creation_timestamp)
            for v in c.search_model_versions(f"name='{contract.name}'")
            if v.tags.get(AUTOMATIC_TAG) == "true"
        ]
    except Exception:  # no registered model yet
        created = []
    now_ms = now.timestamp() * 1000
    out: dict[str, Any] = {"deferred": None}
    if created:
        since = (now_ms - max(created)) / 60_000
        out["minutes_since_last_version"] = round(since, 2)
        if since < guards.cooldown_minutes:
            out["deferred"] = (
                f"cool-down: the last automatic retrain registered its version {since:.1f} min ago "
                f"(< {guards.cooldown_minutes})"
            )
            return out
    today = sum(1 for t in created if now_ms - t < 86_400_000)
    out["versions_last_24h"] = today
    if today >= guards.max_per_day:
        out["deferred"] = f"daily budget: {today} automatic retrains in the last 24 hours (max {guards.max_per_day})"
        return out
    # retraining is only worth it on labels the champion has not seen: with a 90-day label delay a fresh drift
    # has none yet, and a retrain now would learn the old world again
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    champion = champion_version(settings.mlflow_tracking_uri, contract.name)
    seen_until = None
    if champion is not None:
        seen_until = datetime.fromisoformat(
            read_evidence(settings.mlflow_tracking_uri, contract.name, champion)["data_window"][1]
        )
    try:
        matured = entity_frame(lake, contract, now)[EVENT_TIMESTAMP]
    except TrainingDataError as exc:
        out["deferred"] = f"not enough labels: {exc}"
        return out
    new = int((matured > seen_until).sum()) if seen_until is not None else len(matured)
    out["new_labels"], out["champion_window_end"] = new, seen_until.isoformat() if seen_until else None
    if new < guards.min_new_labels:
        out["deferred"] = (
            f"not enough labels: {new} applications with a matured label "
            + (f"after the champion's training window (ended {seen_until:%Y-%m-%d})" if seen_until else "in all")
            + f"; need {guards.min_new_labels}"
        )
    return out


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
    now = datetime.now(UTC)
    started_by = _started_by(params)
    if params.guards.enabled:
        verdict = check_guards(contract_path, params.guards, now)
        if verdict["deferred"]:
            logger.warning("retrain of %s deferred: %s", contract.name, verdict["deferred"])
            event = emit_event(
                event=events.RETRAIN_DEFERRED,
                resource=events.model_resource(contract.name),
                payload={"reason": verdict["deferred"], "started_by": started_by},
            )
            return TrainResult(
                dataset=contract.name,
                version=None,
                eligible=False,
                started_by=started_by,
                event_id=str(event.id) if event else None,
                status=f"deferred: {verdict['deferred']}",
                guards=verdict,
            )
    from tasks.train.tasks import build_training_set, evaluate_candidate, register_candidate, train_model

    config = TrainingConfig(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        seed=params.seed,
        window_days=params.window_days,
        engine=params.engine,
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
        search = tuning_search
        if params.engine == "dask":  # the trials run on the Dask cluster's workers, side by side
            search = tuning_search.with_options(task_runner=dask_runner(settings.dask_address, settings.dask_workers))
        tuning = search(training, contract_path, configs)
        best = max(range(len(tuning)), key=lambda i: tuning[i]["validation_auc"])
        config = replace(config, **tuning[best]["params"])
        logger.info(
            "tuning: %d trials, best validation AUC %.4f with %s",
            len(tuning),
            tuning[best]["validation_auc"],
            tuning[best]["params"],
        )
    model_path = train_model(training, contract_path, config, settings)
    evaluation = evaluate_candidate(training, model_path, contract_path, settings.mlflow_tracking_uri, params.gates)
    if tuning:
        evaluation["report"]["tuning"] = {"trials": tuning, "chosen": {k: getattr(config, k) for k in TUNED}}
    version, card, _ = register_candidate(
        training, model_path, contract_path, settings.mlflow_tracking_uri, evaluation, config, started_by, now
    )
    if params.guards.enabled:
        client(settings.mlflow_tracking_uri).set_model_version_tag(contract.name, version, AUTOMATIC_TAG, "true")
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
        event=events.TRAINED,
        resource={**events.model_resource(contract.name), events.ELIGIBLE_LABEL: str(result.eligible).lower()},
        payload={
            "contract": contract_path,
            "version": version,
            "eligible": result.eligible,
            "roc_auc": result.metrics.get("roc_auc"),
            "started_by": started_by,
        },
    )
    result.event_id = str(event.id) if event else None
    return result
