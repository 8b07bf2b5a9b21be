"""The served deployments, run the way the Prefect UI's Run button runs them, against `closedloop up --flows`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import prefect_api

from closedloop import stack
from closedloop.settings import Settings
from tasks.lake import Lake
from tasks.synthetic import SyntheticConfig, write_synthetic

pytestmark = pytest.mark.integration


@pytest.fixture
def served(settings: Settings) -> Iterator[Settings]:
    stack.up(settings, flows=True)
    try:
        yield settings
    finally:
        stack.down(settings)


def test_ingest_runs_from_the_ui(served: Settings) -> None:
    lake = Lake.of(served.lake_uri, "credit_synthetic")
    write_synthetic(SyntheticConfig(customers=1_000, months=5), lake.landing)
    api = served.prefect_api_url
    deployment = prefect_api("GET", f"{api}/deployments/name/ingest_validate/ingest-validate").json()
    assert set(deployment["parameter_openapi_schema"]["properties"]) == {"params"}  # the UI's run form
    for name in ("train_evaluate/train-evaluate", "package_deploy/package-deploy", "batch_score/batch-score"):
        assert prefect_api("GET", f"{api}/deployments/name/{name}").json()["name"]  # `up --flows` waited for all
    deploy = prefect_api("GET", f"{api}/deployments/name/package_deploy/package-deploy").json()
    assert deploy["global_concurrency_limit"]["limit"] == 1  # one promotion at a time
    run = prefect_api("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={}).json()
    state: dict[str, str] = {}
    for _ in range(240):
        state = prefect_api("GET", f"{api}/flow_runs/{run['id']}").json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.5)
    assert state["type"] == "COMPLETED", state
    ledger = lake.ledger_records()
    assert ledger and all(r["status"] == "accepted" for r in ledger)
    assert sum(r["rows_accepted"] for r in ledger) == sum(r["rows_in"] for r in ledger) > 0
    names = {s.name: s.state for s in stack.status(served)}
    assert names == {"prefect": "running", "mlflow": "running", "flows": "running"}
