"""The monitor flow and the guarded retrain on real servers, with traffic served by the real scoring app.

The data drifts (incomes +40%) from the sixth month on; the first champion knows only the world before it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import prefect_api
from fastapi.testclient import TestClient
from prefect.settings import PREFECT_API_URL

from closedloop import seal, storage
from closedloop.contract import load_contract
from closedloop.inference_log import InferenceLog, InferenceRecord, read_window
from closedloop.lake import Lake
from closedloop.registry import CHAMPION, client
from closedloop.settings import PROJECT_ROOT, Settings, load_settings
from flows.ingest_validate import IngestParams, ingest_validate
from flows.monitor import MonitorParams, monitor
from flows.train_evaluate import TrainParams, train_evaluate
from samples.synthetic import Scenario, SyntheticConfig, last_month_applications, write_synthetic
from serving.app import create_app
from tasks.monitor.policy import MonitorPolicy
from tasks.monitor.records import history, window_label
from tasks.monitor.report import REPORT_PATH
from tasks.monitor.verification import Comparison
from tasks.promote import promotion
from tasks.shared.features import feature_names
from tasks.train.fit import TrainingConfig
from tasks.train.gates import Gates
from tasks.train.guards import AUTOMATIC_TAG, RetrainGuards

pytestmark = pytest.mark.integration

SYNTHETIC = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
CONTRACT = load_contract(SYNTHETIC)
NAME = CONTRACT.name
TOKEN = "monitor-test-token"
LENIENT = Gates(max_demographic_parity_difference=1, max_equalized_odds_difference=1, min_disparate_impact=0)
QUICK = TrainingConfig(n_estimators=150)
POLICY = MonitorPolicy(min_rows=100, min_labelled=100)


@pytest.fixture(scope="module")
def world(
    prefect_server: str, mlflow_server: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    values = {
        "CLOSEDLOOP_STATE_DIR": str(tmp_path_factory.mktemp("monitor-state")),
        "CLOSEDLOOP_MLFLOW_PORT": str(mlflow_server),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = load_settings()
        config = SyntheticConfig(customers=4_000, scenario=Scenario.COVARIATE_SHIFT)
        config = SyntheticConfig(
            customers=4_000, scenario=Scenario.COVARIATE_SHIFT, drift_start=str(config.first_month + 5)
        )
        lake = Lake.of(settings.lake_uri, NAME)
        write_synthetic(config, lake.landing)
        ingest_validate(IngestParams(contract=SYNTHETIC))
        drift_at = datetime.fromisoformat(f"{config.drift_start}-01T00:00:00+00:00")
        first = train_evaluate(
            TrainParams(contract=SYNTHETIC, cutoff=drift_at + timedelta(days=90), training=QUICK, gates=LENIENT)
        )
        assert first.version is not None
        promotion.promote(settings.mlflow_tracking_uri, NAME, first.version, None, seal.key_files(settings), by="test")
        apps = lake.read_offline("applications")
        recent = last_month_applications(apps, "applied_at")
        inputs = [c.name for c in CONTRACT.columns_of(CONTRACT.prediction) if c.is_model_input]
        bodies = [
            {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in recent[["customer_id", *inputs]].to_dict("records")
        ]
        yield {"settings": settings, "lake": lake, "first": first.version, "bodies": bodies}
        client(settings.mlflow_tracking_uri).delete_registered_model(NAME)


@pytest.fixture
def configured(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIR", str(world["settings"].state_dir))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(world["settings"].mlflow_port))
    return world


def serve_window(world: dict[str, Any]) -> tuple[datetime, datetime]:
    """Replay the recent applicants through the scoring app; everything is in the lake when it returns."""
    settings: Settings = world["settings"]
    log = InferenceLog(world["lake"])
    start = datetime.now(UTC)
    with TestClient(create_app(settings, CONTRACT, TOKEN, inference_log=log)) as http:
        bodies = world["bodies"]
        for i in range(0, len(bodies), 200):
            response = http.post(
                "/v1/score/batch",
                json={"applications": bodies[i : i + 200]},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 200, response.text
    log.close()
    return start, datetime.now(UTC) + timedelta(microseconds=1)


def judge(start: datetime, end: datetime, **changes: Any) -> Any:
    minutes = (end - start).total_seconds() / 60
    return monitor(MonitorParams(contract=SYNTHETIC, window_end=end, window_minutes=minutes, policy=POLICY, **changes))


def monitor_artifact() -> dict[str, Any]:
    """The latest monitor run's markdown artifact of the dataset, as Prefect's UI shows it."""
    body = {"artifacts": {"key": {"any_": [f"monitor-{NAME.replace('_', '-')}"]}}, "sort": "CREATED_DESC", "limit": 1}
    found: list[dict[str, Any]] = prefect_api("POST", f"{PREFECT_API_URL.value()}/artifacts/filter", json=body).json()
    assert len(found) == 1
    return found[0]


def headings(markdown: str) -> list[str]:
    """The artifact's section headings, without what they say in brackets."""
    return [line.split(" (")[0] for line in markdown.splitlines() if line.startswith("## ")]


def named(result: Any) -> str:
    """The name of a window's MLflow monitoring run."""
    span = [datetime.fromisoformat(result.window[key]) for key in ("start", "end")]
    return f"monitor {window_label(*span)} v{result.champion}"


def test_an_empty_window_is_no_data_not_an_error(configured: dict[str, Any]) -> None:
    result = judge(datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC))
    assert result.status == "no_data" and result.rows == 0 and result.alert and not result.alert.alert
    assert history(configured["lake"])[-1]["status"] == "no_data"  # recorded, and ignored by the alert policy


def test_drift_alerts_on_the_second_violated_window_with_a_small_event(configured: dict[str, Any]) -> None:
    first = judge(*serve_window(configured))
    assert first.status == "judged" and first.rows == len(configured["bodies"])
    # the served features are the offline store's at request time: no skew on traffic nothing was injected into
    assert first.skew is not None and first.skew["status"] == "judged" and first.skew["violations"] == []
    assert first.skew["sampled"] == first.rows and all(f["mismatched"] == 0 for f in first.skew["features"])
    assert "income" in first.drifted and "feature_drift" in first.violations
    assert "loan_term_months" not in first.drifted  # untouched by the scenario
    assert first.alert and not first.alert.alert and first.event_id is None  # one window is not enough (2 of 3)
    record = history(configured["lake"])[-1]
    assert record["performance"]["verdict"] == "no_verdict"  # recent applications: no label has matured
    assert 0.5 < record["estimated_performance"]["expected_auc"] < 1
    report = storage.read_bytes(first.report_uri or "").decode()
    assert "<html" in report.lower()
    assert first.agreement and first.agreement.compared_columns == len(feature_names(CONTRACT))
    assert "income" in first.agreement.evidently_drifted
    # Evidently's headline applies our rule: a violated window is a drifted one on both sides
    assert first.agreement.dataset_drift and first.agreement.evidently_dataset_drift
    assert "Dataset Drift is detected" in report and "closedloop's drift rule" in report

    second = judge(*serve_window(configured))
    assert second.alert and second.alert.alert and second.event_id
    assert second.agreement and second.agreement.dataset_drift and second.agreement.evidently_dataset_drift
    # the window's MLflow run is named by the window, and the Prefect artifact links MLflow's page of its report
    uri = configured["settings"].mlflow_tracking_uri
    runs = [client(uri).get_run(r.agreement.mlflow_run) for r in (first, second)]
    assert [run.info.run_name for run in runs] == [named(first), named(second)] and named(first) != named(second)
    assert second.agreement.url == (
        f"{uri}/#/experiments/{runs[1].info.experiment_id}/runs/{runs[1].info.run_id}/artifacts/{REPORT_PATH}"
        "?workflowType=machine_learning"  # MLflow's model-training layout, not its GenAI one
    )
    served = httpx.get(f"{uri}/get-artifact", params={"path": REPORT_PATH, "run_uuid": runs[1].info.run_id})
    assert served.status_code == 200 and "Dataset Drift is detected" in served.text  # what the UI's page fetches
    shown = monitor_artifact()
    label = named(second).removeprefix("monitor ").removesuffix(f" v{second.champion}")
    said = shown["description"]
    assert said.startswith(f"Window {label} of {NAME} v{second.champion}: judged on {second.rows} served rows, ")
    assert said.endswith("; the drift alert was raised.") and "feature drift" in said
    assert headings(shown["data"]) == [
        "## Feature drift",
        "## Score drift",
        "## Data quality",
        "## Estimated performance",
        "## Realized performance",
        "## Fairness drift",
        "## Training-serving skew",
        "## Evidently report",
    ]
    assert f"[Evidently data drift report]({second.agreement.url})" in shown["data"] and "file://" not in shown["data"]
    events: list[dict[str, Any]] = []
    for _ in range(60):  # events reach the server through a background worker and are persisted in batches
        events = prefect_api(
            "POST", f"{PREFECT_API_URL.value()}/events/filter", json={"filter": {"id": {"id": [second.event_id]}}}
        ).json()["events"]
        if events:
            break
        time.sleep(0.5)
    assert len(events) == 1 and events[0]["event"] == "closedloop.drift.detected"
    payload = events[0]["payload"]
    assert payload["champion"] == configured["first"] and "income" in payload["features"]
    assert payload["contract"] == SYNTHETIC and payload["severity"] in ("medium", "high")
    assert len(str(payload)) < 4_000  # a small payload: scores, not the report


def test_drift_by_column_chunks_on_dask_workers_matches_the_flow_process(configured: dict[str, Any]) -> None:
    """The monitor's ``engine: dask`` path: the same verdicts and scores, computed by two worker processes."""
    from flows.monitor import drift_on_dask
    from tasks.monitor.sources import read_served, reference_profile
    from tasks.shared.drift import drift_rules, window_drift

    start, end = serve_window(configured)
    frame = read_served(configured["lake"], start, end)
    uri = configured["settings"].mlflow_tracking_uri
    champion = str(client(uri).get_model_version_by_alias(NAME, CHAMPION).version)
    profile = reference_profile(uri, NAME, champion)
    here = window_drift(profile, frame, drift_rules(CONTRACT, feature_names(CONTRACT)), frame["score"].to_numpy())
    there = drift_on_dask(configured["settings"], SYNTHETIC, CONTRACT, configured["lake"], frame, champion, chunks=3)
    assert not storage.list_objects(storage.join(configured["lake"].root, "monitor", "staging"))  # stage dropped
    assert len(there["columns"]) == len(feature_names(CONTRACT)) == len(here["columns"])
    assert [c["column"] for c in there["columns"]] == [c["column"] for c in here["columns"]]  # the contract's order
    assert there["drifted"] == here["drifted"] and "income" in there["drifted"]
    assert [c["score"] for c in there["columns"]] == pytest.approx([c["score"] for c in here["columns"]], abs=1e-12)
    assert there["score"] == here["score"] and there["rows"] == here["rows"] == len(frame)


def test_guarded_retrain_defers_then_trains_then_cools_down(configured: dict[str, Any]) -> None:
    uri = configured["settings"].mlflow_tracking_uri
    before = {v.version for v in client(uri).search_model_versions(f"name='{NAME}'")}
    starved = train_evaluate(
        TrainParams(
            contract=SYNTHETIC,
            training=QUICK,
            gates=LENIENT,
            guards=RetrainGuards(enabled=True, min_new_labels=10**6),
        )
    )
    assert starved.version is None and starved.status.startswith("deferred: not enough labels")
    assert starved.guards and (starved.guards.new_labels or 0) > 0  # labels matured since the champion's window ...
    # the deferral counts for the cool-down too: a retrain right after it goes ahead only without one
    trained = train_evaluate(
        TrainParams(
            contract=SYNTHETIC, training=QUICK, gates=LENIENT, guards=RetrainGuards(enabled=True, cooldown_minutes=0)
        )
    )
    assert trained.status == "trained" and trained.version not in before
    assert client(uri).get_model_version(NAME, trained.version).tags[AUTOMATIC_TAG] == "true"
    again = train_evaluate(
        TrainParams(contract=SYNTHETIC, training=QUICK, gates=LENIENT, guards=RetrainGuards(enabled=True))
    )
    assert again.version is None and again.status.startswith("deferred: cool-down")
    after = {v.version for v in client(uri).search_model_versions(f"name='{NAME}'")}
    assert after == before | {trained.version}  # deferred runs register nothing

    # the new champion's reference is the drifted world: its first window finds the drift gone
    keys = seal.key_files(configured["settings"])
    promotion.promote(uri, NAME, str(trained.version), configured["first"], keys, by="test")
    verified = judge(*serve_window(configured))
    assert verified.verification is not None
    assert verified.verification.earlier_violations == ["feature_drift"]
    assert "income" not in verified.drifted and verified.alert and not verified.alert.alert
    assert verified.verification.comparison == "not enough labelled rows yet"
    assert "## Post-deploy verification" in headings(monitor_artifact()["data"])
    assert verified.agreement and not verified.agreement.dataset_drift  # a quiet window for both, by the same rule
    assert not verified.agreement.evidently_dataset_drift and not verified.agreement.evidently_drifted


def test_post_deploy_verification_rolls_back_a_champion_worse_than_previous(configured: dict[str, Any]) -> None:
    """A new champion whose served scores are noise, on customers whose labels have matured, is rolled back."""
    uri = configured["settings"].mlflow_tracking_uri
    good = str(client(uri).get_model_version_by_alias(NAME, CHAMPION).version)
    keys = seal.key_files(configured["settings"])
    promotion.promote(uri, NAME, configured["first"], good, keys, by="test")  # champion: first; previous: good
    training = sorted((configured["settings"].state_dir / "training" / NAME).glob("training-*.parquet"))
    labelled = pd.read_parquet(training[-1]).drop_duplicates("customer_id").tail(600)
    rng = np.random.default_rng(0)
    names = feature_names(CONTRACT)
    log = InferenceLog(configured["lake"])
    start = datetime.now(UTC)
    for row in labelled.to_dict("records"):
        log.append(
            InferenceRecord(
                request_id=uuid.uuid4().hex,
                scored_at=datetime.now(UTC),
                dataset=NAME,
                model_version=configured["first"],
                entity_id=int(row["customer_id"]),
                features={
                    k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items() if k in names
                },
                score=float(rng.random()),  # served by a broken model: no skill at all
                decision="approve",
                latency_ms=1.0,
            )
        )
    log.close()
    result = judge(start, datetime.now(UTC) + timedelta(microseconds=1))
    check = result.verification
    assert check is not None and check.verdict == "rolled back", check
    assert check.labelled_rows == len(labelled)
    assert isinstance(check.comparison, Comparison)
    assert check.comparison.champion_auc < 0.6 < check.comparison.previous_auc
    assert str(client(uri).get_model_version_by_alias(NAME, CHAMPION).version) == good
    assert check.event_id and check.rollback == {"champion": good, "rolled_back": configured["first"]}
    record = history(configured["lake"])[-1]
    assert record["performance"]["verdict"] == "degraded"  # the labelled window also says so
    shown = monitor_artifact()["data"]
    assert f"v{configured['first']}'s first judged window: **rolled back**" in shown
    assert "| roc_auc |" in shown  # the realized performance, judged on the matured labels


def test_served_refusals_of_one_sex_are_a_fairness_drift_sent_for_review(configured: dict[str, Any]) -> None:
    """Women refused, men approved: the sexes come from the offline profiles, never from the served requests."""
    profiles = configured["lake"].read_offline("profiles", columns=["customer_id", "sex"])
    sex = profiles.drop_duplicates("customer_id", keep="last").set_index("customer_id")["sex"]
    champion = str(
        client(configured["settings"].mlflow_tracking_uri).get_model_version_by_alias(NAME, CHAMPION).version
    )
    names = feature_names(CONTRACT)
    log = InferenceLog(configured["lake"])
    start = datetime.now(UTC)
    for body in configured["bodies"]:
        woman = sex.get(body["customer_id"]) == "female"
        log.append(
            InferenceRecord(
                request_id=uuid.uuid4().hex,
                scored_at=datetime.now(UTC),
                dataset=NAME,
                model_version=champion,
                entity_id=int(body["customer_id"]),
                features={k: v for k, v in body.items() if k in names},
                score=0.9 if woman else 0.1,
                decision="refuse" if woman else "approve",
                latency_ms=1.0,
            )
        )
    log.close()
    result = judge(start, datetime.now(UTC) + timedelta(microseconds=1), evidently=False)
    assert "fairness_drift" in result.violations and "sex" in result.fairness_drifted
    assert result.review == ["fairness_drift"]  # the contract's default action: a person reviews it
    shown = monitor_artifact()
    assert "## Fairness drift" in headings(shown["data"]) and "## Evidently report" not in headings(shown["data"])
    assert "fairness drift" in shown["description"]
    record = history(configured["lake"])[-1]
    assert record["fairness_drift"]["attributes"]["sex"]["disparate_impact"] == 0
    assert "feature.sex" not in read_window(configured["lake"], start, datetime.now(UTC)).columns
    events: list[dict[str, Any]] = []
    for _ in range(60):  # events reach the server through a background worker and are persisted in batches
        events = prefect_api(
            "POST",
            f"{PREFECT_API_URL.value()}/events/filter",
            json={"filter": {"id": {"id": [result.fairness_event_id]}}},
        ).json()["events"]
        if events:
            break
        time.sleep(0.5)
    assert len(events) == 1 and events[0]["event"] == "closedloop.fairness.drifted"
    assert events[0]["payload"]["attributes"]["sex"]["groups"] and events[0]["payload"]["action"] == "review"
