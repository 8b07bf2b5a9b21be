"""Every flow as a Prefect deployment; ``closedloop serve-flows`` serves them on the embedded default.

Served deployments appear in the Prefect UI with a run form built from each flow's pydantic parameters.
The closed loop is two event triggers:

* ``closedloop.drift.detected`` (the monitor's alert) -> ``train-evaluate`` with the retrain guards on; the run
  keeps the event id in its evidence record, and the drift period from the payload decides the label check;
* ``closedloop.model.trained`` with ``closedloop.eligible=true`` on its resource -> ``package-deploy`` of that
  version (approval on in production, as ``DeployParams`` decides).

A drift storm starts one retrain, in three layers: the drift trigger fires once per model per cool-down
(``within``: the events after the first are dropped by Prefect's automation and start no run); ``train-evaluate``
runs one at a time and a run that arrives while one is running is cancelled (``CANCEL_NEW``: drift plus the
weekly schedule); and the retrain guards, which claim each automatic attempt in the lake under a lock, end any
run that still gets through within the cool-down quickly, in a Completed state named "Deferred".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Interval

from closedloop import events
from flows.batch_score import batch_score
from flows.ingest_validate import IngestParams, ingest_validate
from flows.monitor import MonitorParams, monitor
from flows.package_deploy import DeployParams, package_deploy
from flows.train_evaluate import TrainParams, train_evaluate
from tasks.train.guards import RetrainGuards

INGEST = "ingest-validate"
TRAIN = "train-evaluate"
DEPLOY = "package-deploy"
MONITOR = "monitor"
BATCH_SCORE = "batch-score"

HOUR = 3600
WEEK = 7 * 24 * HOUR
# schedules tick on the hour, and the safety-net retrain on Sundays at 03:00 UTC, never at the moment
# `serve-flows` starts (an anchor of "now" would start a run at once)
ON_THE_HOUR = datetime(2026, 1, 4, 0, 0, tzinfo=UTC)
SUNDAY_3AM = datetime(2026, 1, 4, 3, 0, tzinfo=UTC)


# a plain Jinja template renders to a string; Prefect's shorthand "{{ event.id }}" would pass the id through
# `tojson`, which cannot serialise a UUID (the automation then fails with InvalidJinja)
EVENT_ID = {"__prefect_kind": "jinja", "template": "{{ event.id }}"}


# after a detected change, learn the new world from the recent window rather than a mixture of both: on the
# synthetic income drift the full-history retrain failed the equalized-odds limit on age (0.178 > 0.15) while
# the 180-day one passed every gate with the same test AUC (0.850)
DRIFT_RETRAIN_WINDOW_DAYS = 180

# the triggered run's guards are RetrainGuards' defaults: the automation fires at most once per that cool-down
DRIFT_DEBOUNCE = timedelta(minutes=RetrainGuards().cooldown_minutes)


def retrain_on_drift() -> DeploymentEventTrigger:
    """Drift event -> guarded retrain; the event's payload becomes the run's parameters.

    A reactive trigger with threshold 1 fires on the first event, then ignores the events that occurred within
    ``within`` of it: Prefect's own debounce, one bucket per model (``for_each``), so a drift on one dataset never
    silences another's. The events it ignores stay in the event feed; they start no run.
    """
    return DeploymentEventTrigger(
        name="retrain-on-drift",
        description="The monitor's drift alert (closedloop.drift.detected) starts a guarded retrain on the last "
        f"{DRIFT_RETRAIN_WINDOW_DAYS} days, at most once per {DRIFT_DEBOUNCE.total_seconds() / 60:g} minutes per "
        "model; the run's guards (cool-down, daily budget, new labels) may still defer it, with the reason.",
        expect={events.DRIFT_DETECTED},
        match={"prefect.resource.id": events.MODEL_RESOURCES},
        for_each={"prefect.resource.id"},
        threshold=1,
        within=DRIFT_DEBOUNCE,
        parameters={
            "params": {
                "contract": "{{ event.payload.contract }}",
                "trigger_event_id": EVENT_ID,
                "guards": {"enabled": True},
                "training": {"window_days": DRIFT_RETRAIN_WINDOW_DAYS},
            }
        },
    )


def deploy_when_eligible() -> DeploymentEventTrigger:
    """An eligible trained version -> package and deploy it."""
    return DeploymentEventTrigger(
        name="deploy-eligible-version",
        description="A version that passed every gate (closedloop.model.trained, eligible) is packaged, validated "
        "in a fresh interpreter and promoted; a version judged by loosened limits waits for a person's approval.",
        expect={events.TRAINED},
        match={"prefect.resource.id": events.MODEL_RESOURCES, events.ELIGIBLE_LABEL: "true"},
        parameters={
            "params": {
                "contract": "{{ event.payload.contract }}",
                "version": "{{ event.payload.version }}",
                "trigger_event_id": EVENT_ID,
            }
        },
    )


def deployments() -> list[Any]:
    """The deployments to serve (schedules are active only while `serve-flows` runs).

    Registered in this order; ``closedloop up --flows`` waits for the last one (batch-score).
    """
    weekly = TrainParams(guards={"enabled": True}).model_dump(mode="json")  # type: ignore[arg-type]
    return [
        ingest_validate.to_deployment(
            name=INGEST,
            description="Validate new landing-zone batches, quarantine bad rows, refresh the feature store.",
            parameters={"params": IngestParams().model_dump()},
            schedules=[Interval(HOUR, anchor_date=ON_THE_HOUR, parameters={"params": IngestParams().model_dump()})],
            tags=["closedloop", "ingest"],
        ),
        train_evaluate.to_deployment(
            name=TRAIN,
            description="Train a challenger on matured labels, evaluate it against the gates, register it. "
            "Triggered by drift events; a weekly guarded run is the safety net.",
            parameters={"params": TrainParams().model_dump(mode="json")},
            schedules=[Interval(WEEK, anchor_date=SUNDAY_3AM, parameters={"params": weekly})],
            triggers=[retrain_on_drift()],
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            tags=["closedloop", "train"],
        ),
        package_deploy.to_deployment(
            name=DEPLOY,
            description="Bundle an eligible version, validate it in a fresh interpreter, ask, promote it atomically.",
            parameters={"params": DeployParams().model_dump(mode="json")},
            triggers=[deploy_when_eligible()],
            concurrency_limit=1,  # promotions never race between the champion check and the alias move
            tags=["closedloop", "deploy"],
        ),
        monitor.to_deployment(
            name=MONITOR,
            description="Judge the last hour of served traffic: drift, quality, performance; alert with hysteresis.",
            parameters={"params": MonitorParams(window_minutes=60).model_dump(mode="json")},
            schedules=[
                Interval(
                    HOUR,
                    anchor_date=ON_THE_HOUR,
                    parameters={"params": MonitorParams(window_minutes=60).model_dump(mode="json")},
                )
            ],
            concurrency_limit=1,
            tags=["closedloop", "monitor"],
        ),
        batch_score.to_deployment(
            name=BATCH_SCORE,
            description="Score a window of applications with the champion; the scores go to the lake.",
            tags=["closedloop", "score"],
        ),
    ]


PROJECT_FOLDER = Path(__file__).resolve().parents[1]
KUBERNETES_JOB_TEMPLATE = PROJECT_FOLDER / "infra" / "helm" / "base-job-template.json"


def register_on_pool(pool: str, kind: str = "process", image: str | None = None) -> dict[str, str]:
    """Register every deployment on a work pool, whose worker runs their flow runs; returns name -> id.

    ``process``: a worker on a machine with this project (``prefect worker start --pool POOL``) runs each flow run
    in a subprocess in the project folder. ``kubernetes``: the pool is created with infra's Job template and each
    flow run becomes a Job of closedloop's ``image``. Schedules, triggers and concurrency limits are those
    ``serve-flows`` serves; a missing pool is created.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    if kind not in ("process", "kubernetes"):
        raise ValueError(f"work pool type {kind!r}: use 'process' or 'kubernetes'")
    if kind == "kubernetes" and not image:
        raise ValueError("a Kubernetes work pool runs flow runs in closedloop's image: give --image")
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        if existing is not None and existing.type != kind:
            raise ValueError(f"work pool {pool!r} exists with type {existing.type!r}, not {kind!r}")
        if existing is None:
            if kind == "process":
                from prefect.workers.process import ProcessWorker

                template = ProcessWorker.get_default_base_job_template()
            else:
                template = json.loads(KUBERNETES_JOB_TEMPLATE.read_text())
            client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template))
    from prefect.runner.storage import LocalStorage

    # where the worker's flow-run process finds the code: this project here, the image's /app in a Job
    code = LocalStorage("/app" if kind == "kubernetes" else str(PROJECT_FOLDER))
    registered = {}
    for deployment in deployments():
        deployment.work_pool_name = pool
        deployment.storage = code
        if image:
            deployment.job_variables = {**deployment.job_variables, "image": image}
        registered[deployment.name] = str(deployment.apply())
    return registered
