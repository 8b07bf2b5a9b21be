"""The production profile end to end on real services: Prefect and MLflow on Postgres, MLflow artifacts and the
lake on S3 (moto's server on loopback), Feast's SQL registry on Postgres, Redis as the online store.

Ingest and training run as a user runs them (``closedloop ingest`` / ``closedloop train`` in their own processes,
against the running stack); scoring reads the champion from MLflow and the features from Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from closedloop import stack
from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT, Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

CLOSEDLOOP = str(Path(sys.executable).parent / "closedloop")
CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
REDIS_DB = 7  # this test's own database on the machine's Redis, emptied afterwards


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import psycopg
    import redis

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3).ping()
    except (psycopg.Error, redis.RedisError) as exc:  # .ci/run starts both; a developer machine may not run them
        pytest.skip(f"Postgres or Redis is not running on 127.0.0.1 ({exc})")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("CLOSEDLOOP_", "PREFECT_"))}
    env.update(
        CLOSEDLOOP_PROFILE="production",
        CLOSEDLOOP_STATE_DIR=str(tmp_path_factory.mktemp("production-state")),
        CLOSEDLOOP_DATABASE_PREFIX=f"cltest_{uuid.uuid4().hex[:8]}",
        CLOSEDLOOP_PREFECT_PORT=str(free_port()),
        CLOSEDLOOP_MLFLOW_PORT=str(free_port()),
        CLOSEDLOOP_S3_PORT=str(free_port()),
        CLOSEDLOOP_REDIS_URL=f"127.0.0.1:6379,db={REDIS_DB}",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    env["CLOSEDLOOP_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{env['CLOSEDLOOP_S3_PORT']}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            if key.startswith(("CLOSEDLOOP_", "AWS_")):
                patch.setenv(key, value)
        settings = load_settings()
        try:
            stack.up(settings, s3=True)
            yield {"settings": settings, "env": env}
        finally:
            stack.down(settings)
            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                for name in settings.postgres_databases:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def _cli(production: dict[str, Any], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [CLOSEDLOOP, *args, "--json"], env=production["env"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    return parsed


def test_ingest_train_and_score_on_postgres_redis_and_s3(production: dict[str, Any]) -> None:
    import boto3

    from feature_repo.store import open_store
    from tasks import scoring
    from tasks.lake import Lake
    from tasks.registry import CHAMPION, client
    from tasks.synthetic import SyntheticConfig, write_synthetic

    settings: Settings = production["settings"]
    assert settings.lake_uri.startswith("s3://")
    write_synthetic(SyntheticConfig(customers=2_500), settings.landing_uri(CONTRACT.name), settings.s3_endpoint_url)

    ingested = _cli(production, "ingest")
    assert (
        ingested["rows_accepted"] > 0
        and ingested["rows_in"] == ingested["rows_accepted"] + ingested["rows_quarantined"]
    )
    assert {"profiles", "credit_history", "credit_history_history"} <= set(ingested["materialized_views"])
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix="lake/")
        for o in page.get("Contents", [])
    ]
    assert any(k.startswith(f"lake/{CONTRACT.name}/offline/profiles/event_date=") for k in keys)  # the lake is on S3
    assert not (settings.state_dir / "lake").exists()  # and nowhere else

    # the training set comes from the offline store on S3 (DuckDB over httpfs), the model goes to MLflow's S3
    trained = _cli(production, "train")
    version = trained["version"]
    assert version and trained["training_rows"] > 1_000
    artifacts = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="mlflow/").get("KeyCount", 0)
    assert artifacts > 0

    # the online store is Redis: the scoring path reads a recent applicant's features from it
    client(settings.mlflow_tracking_uri).set_registered_model_alias(CONTRACT.name, CHAMPION, version)
    applications = Lake.of(settings.lake_uri, CONTRACT.name, settings.s3_endpoint_url).read_offline("applications")
    latest = applications.sort_values("applied_at").iloc[-1]
    source = scoring.FeatureSource(open_store(settings, CONTRACT), CONTRACT)
    assert not source.uses_fast_path  # Feast's Redis reader, not the SQLite shortcut
    stored = source.stored([int(latest["customer_id"])])[0]
    assert stored is not None and stored["income"] is not None
    model = scoring.load_version(settings.mlflow_tracking_uri, CONTRACT.name, version)
    body = {
        "customer_id": int(latest["customer_id"]),
        "loan_amount": float(latest["loan_amount"]),
        "loan_term_months": int(latest["loan_term_months"]),
        "loan_purpose": str(latest["loan_purpose"]),
        "channel": str(latest["channel"]),
    }
    (answer,) = scoring.score(model, source, [body])
    assert 0.0 < answer.probability < 1.0 and answer.decision in ("approve", "refuse")
