"""Event names and resources: the deployments' triggers match what the flows emit."""

from __future__ import annotations

from fnmatch import fnmatch

from closedloop import events


def test_model_events_match_the_model_triggers_and_dataset_events_do_not() -> None:
    for name in (events.TRAINED, events.PROMOTED, events.ROLLED_BACK):
        assert fnmatch(name, events.MODEL_RESOURCES)
    assert not fnmatch(events.INGESTED, events.MODEL_RESOURCES)


def test_every_event_name_is_distinct_and_namespaced() -> None:
    names = [events.INGESTED, events.TRAINED, events.RETRAIN_DEFERRED, events.PROMOTED]
    names += [events.ROLLED_BACK, events.DRIFT_DETECTED]
    assert len(set(names)) == len(names)
    assert all(name.startswith("closedloop.") for name in names)


def test_resources_name_the_dataset_and_tell_models_from_datasets() -> None:
    assert events.model_resource("credit") == {
        "prefect.resource.id": "closedloop.model.credit",
        "prefect.resource.name": "credit",
    }
    assert events.dataset_resource("credit")["prefect.resource.id"] == "closedloop.dataset.credit"
    assert fnmatch(events.model_resource("credit")["prefect.resource.id"], events.MODEL_RESOURCES)
    assert not fnmatch(events.dataset_resource("credit")["prefect.resource.id"], events.MODEL_RESOURCES)
