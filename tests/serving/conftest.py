"""The served stack the serving tests share: synthetic credit data ingested, one champion, the app on it.

Built once for the package (ingest, materialize and a training run: the costly part of these tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from closedloop import seal
from closedloop.contract import load_contract
from closedloop.lake import Lake
from closedloop.registry import client
from closedloop.settings import PROJECT_ROOT, load_settings
from flows.ingest_validate import IngestParams, ingest_validate
from flows.train_evaluate import TrainParams, train_evaluate
from samples.synthetic import SyntheticConfig, last_month_applications, write_synthetic
from serving.app import create_app
from tasks.promote import promotion
from tasks.train.fit import TrainingConfig

SYNTHETIC = PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"
CONTRACT = load_contract(SYNTHETIC)
TOKEN = "s3cret-token"


@pytest.fixture(scope="package")
def served(
    prefect_server: str, mlflow_server: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A year of recent synthetic data ingested and materialized, one model trained and made champion."""
    values = {
        "CLOSEDLOOP_STATE_DIR": str(tmp_path_factory.mktemp("serving-state")),
        "CLOSEDLOOP_MLFLOW_PORT": str(mlflow_server),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = load_settings()
        write_synthetic(SyntheticConfig(customers=4_000), Lake.of(settings.lake_uri, CONTRACT.name).landing)
        ingest_validate(IngestParams(contract=str(SYNTHETIC)))
        trained = train_evaluate(TrainParams(contract=str(SYNTHETIC), training=TrainingConfig(n_estimators=200)))
        keys = seal.key_files(settings)  # made champion as the deploy flow does: sealed
        promotion.promote(settings.mlflow_tracking_uri, CONTRACT.name, trained.version, None, keys, by="test")
        lake = Lake.of(settings.lake_uri, CONTRACT.name)
        applications = lake.read_offline("applications")
        # customers who applied lately: their statements are still within the history view's TTL online
        recent = last_month_applications(applications, "applied_at")
        yield {
            "settings": settings,
            "version": trained.version,
            "customers": recent["customer_id"].tolist(),
            "token": TOKEN,
        }
        # the MLflow server is shared by the session: leave no champion behind for the next package
        client(settings.mlflow_tracking_uri).delete_registered_model(CONTRACT.name)


@pytest.fixture
def app_client(served: dict[str, Any]) -> Iterator[TestClient]:
    app = create_app(served["settings"], CONTRACT, TOKEN, refresh_seconds=0.2)
    with TestClient(app) as http:
        yield http
