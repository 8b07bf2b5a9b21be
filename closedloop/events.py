"""Every Prefect event closedloop emits or listens to, and the resources they are about, in one place.

The deployments' triggers (``deployments/schedules.py``) match on these names; the flows emit them.
"""

from __future__ import annotations

INGESTED = "closedloop.data.ingested"  # a batch was stored; payload: tables, rows
RETRACTED = "closedloop.batch.retracted"  # a batch's rows left the offline and online stores; payload: batch, rows
TRAINED = "closedloop.model.trained"  # a version was registered; payload: version, eligible
RETRAIN_DEFERRED = "closedloop.retrain.deferred"  # a guard held an automatic retrain back
PROMOTED = "closedloop.model.promoted"  # a version became the champion
ROLLED_BACK = "closedloop.model.rolled_back"  # post-deploy verification put the previous champion back
DRIFT_DETECTED = "closedloop.drift.detected"  # the monitor's alert opened: starts the retrain
SKEW_DETECTED = "closedloop.skew.detected"  # served features differ from the offline store's: for a person
FAIRNESS_DRIFT = "closedloop.fairness.drifted"  # a window's served decisions broke a fairness limit or moved
CHAMPION_REFUSED = "closedloop.model.champion_refused"  # a scoring service refused an unsealed champion

MODEL_RESOURCES = "closedloop.model.*"  # what the model triggers match
ELIGIBLE_LABEL = "closedloop.eligible"  # resource label on TRAINED: whether the version passed its gates


def model_resource(name: str) -> dict[str, str]:
    """The Prefect event resource of a dataset's model (what the deployment triggers match on)."""
    return {"prefect.resource.id": f"closedloop.model.{name}", "prefect.resource.name": name}


def dataset_resource(name: str) -> dict[str, str]:
    """The Prefect event resource of a dataset (ingest and retraction events)."""
    return {"prefect.resource.id": f"closedloop.dataset.{name}", "prefect.resource.name": name}
