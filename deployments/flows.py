"""Every flow as a Prefect deployment; ``closedloop serve-flows`` serves them on the embedded default.

Served deployments appear in the Prefect UI with a run form built from each flow's pydantic parameters.
"""

from __future__ import annotations

from typing import Any

from prefect.schedules import Interval

from flows.ingest_validate import IngestParams, ingest_validate

INGEST = "ingest-validate"


def deployments() -> list[Any]:
    """The deployments to serve (schedules are active only while `serve-flows` runs)."""
    return [
        ingest_validate.to_deployment(
            name=INGEST,
            description="Validate new landing-zone batches, quarantine bad rows, refresh the feature store.",
            parameters={"params": IngestParams().model_dump()},
            schedules=[Interval(3600, parameters={"params": IngestParams().model_dump()})],
            tags=["closedloop", "ingest"],
        ),
    ]
