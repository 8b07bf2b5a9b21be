"""Every flow as a Prefect deployment; ``closedloop serve-flows`` serves them on the embedded default.

Served deployments appear in the Prefect UI with a run form built from each flow's pydantic parameters.
"""

from __future__ import annotations

from typing import Any

from prefect.schedules import Interval

from flows.batch_score import batch_score
from flows.ingest_validate import IngestParams, ingest_validate
from flows.package_deploy import DeployParams, package_deploy
from flows.train_evaluate import TrainParams, train_evaluate

INGEST = "ingest-validate"
TRAIN = "train-evaluate"
DEPLOY = "package-deploy"
BATCH_SCORE = "batch-score"


def deployments() -> list[Any]:
    """The deployments to serve (schedules are active only while `serve-flows` runs).

    Registered in this order; ``closedloop up --flows`` waits for the last one (batch-score).
    """
    return [
        ingest_validate.to_deployment(
            name=INGEST,
            description="Validate new landing-zone batches, quarantine bad rows, refresh the feature store.",
            parameters={"params": IngestParams().model_dump()},
            schedules=[Interval(3600, parameters={"params": IngestParams().model_dump()})],
            tags=["closedloop", "ingest"],
        ),
        train_evaluate.to_deployment(
            name=TRAIN,
            description="Train a challenger on matured labels, evaluate it against the gates, register it.",
            parameters={"params": TrainParams().model_dump(mode="json")},
            tags=["closedloop", "train"],
        ),
        package_deploy.to_deployment(
            name=DEPLOY,
            description="Bundle an eligible version, validate it in a fresh interpreter, ask, promote it atomically.",
            parameters={"params": DeployParams().model_dump(mode="json")},
            concurrency_limit=1,  # promotions never race between the champion check and the alias move
            tags=["closedloop", "deploy"],
        ),
        batch_score.to_deployment(
            name=BATCH_SCORE,
            description="Score a window of applications with the champion; the scores go to the lake.",
            tags=["closedloop", "score"],
        ),
    ]
