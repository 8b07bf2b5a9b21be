"""The train/evaluate flow on real servers: Prefect (test server), MLflow (tracking server), Feast (DuckDB + SQLite)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import prefect_api

from closedloop import events
from closedloop.lake import Lake
from closedloop.registry import CHALLENGER, CHAMPION, client, read_evidence
from closedloop.settings import PROJECT_ROOT, load_settings
from flows.ingest_validate import IngestParams, ingest_validate
from flows.train_evaluate import TrainParams, train_evaluate
from samples.synthetic import SyntheticConfig, write_synthetic
from tasks.train.fit import TrainingConfig, TrainingDataError

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

pytestmark = pytest.mark.integration

SYNTHETIC = str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")


@pytest.fixture(scope="module")
def env(prefect_server: str, mlflow_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A state folder with a year of ingested synthetic data, and the variables that point at it."""
    values = {
        "CLOSEDLOOP_STATE_DIR": str(tmp_path_factory.mktemp("train-state")),
        "CLOSEDLOOP_MLFLOW_PORT": str(mlflow_server),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = load_settings()
        write_synthetic(
            SyntheticConfig(customers=6_000, start="2025-01", months=12),
            Lake.of(settings.lake_uri, "credit_synthetic").landing,
        )
        ingest_validate(IngestParams(contract=SYNTHETIC))
    yield values
    # the MLflow server is shared by the session: leave no champion behind for the next module
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # none registered when only the retrieval tests ran
        client(f"http://127.0.0.1:{mlflow_server}").delete_registered_model("credit_synthetic")


@pytest.fixture
def configured(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings().mlflow_tracking_uri


def test_first_model_is_registered_with_its_evidence(configured: str, prefect_server: str) -> None:
    result = train_evaluate(TrainParams(contract=SYNTHETIC, trigger_event_id="evt-123"))
    assert result.metrics["roc_auc"] > 0.75
    low, high = result.intervals["roc_auc"]
    assert low < result.metrics["roc_auc"] < high
    assert result.gates["champion"].reason == "no champion yet: absolute floors only"
    assert result.started_by == "event:evt-123"
    c = client(configured)
    version = c.get_model_version("credit_synthetic", result.version)
    assert version.tags["gate.quality_floor"] == "pass"
    assert version.tags["gate.behaviour"] == "pass"  # monotone constraints from the contract hold
    assert version.tags["eligible"] == str(result.eligible).lower()
    aliases = c.get_registered_model("credit_synthetic").aliases
    assert (aliases.get(CHALLENGER) == result.version) == result.eligible
    evidence = read_evidence(configured, "credit_synthetic", result.version)
    assert evidence["report"]["metrics"]["roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    assert evidence["started_by"] == "event:evt-123"
    # every application has its profile and a statement within the history's ttl: none is left out
    assert result.gates["feature_coverage"].verdict == "pass"
    assert evidence["feature_coverage"]["left_out"] == 0
    assert evidence["feature_coverage"]["coverage"] == {"profiles": 1.0, "credit_history": 1.0}
    assert evidence["feature_coverage"]["rows"] == evidence["training_rows"] == result.training_rows
    assert set(evidence["report"]["fairness"]) == {"age", "sex", "marital_status"}
    assert evidence["feature_service"] == "credit_synthetic_model_v1"
    explanations = evidence["report"]["explanations"]
    assert explanations["global"] and max(explanations["global"].values()) > 0
    assert set(explanations["by_group"]["sex"]) == {"female", "male"}
    assert explanations["example_reasons"] and all(r["contribution"] > 0 for r in explanations["example_reasons"])
    logged = {a.path for a in c.list_artifacts(version.run_id, "plots")}
    expected_plots = {"roc", "precision_recall", "calibration", "expected_cost", "shap_importance", "fairness_by_group"}
    assert {f"plots/{name}.png" for name in expected_plots} <= logged
    assert evidence["report"]["decision"]["chosen_on"] == "validation"
    # a failed single threshold is followed by a group-threshold candidate, on an attribute the contract allows
    fairness = evidence["report"]["fairness"]
    failed = {a for a, r in fairness.items() if r["verdict"] == "fail"}
    mitigation = evidence["report"].get("mitigation")
    assert (mitigation is not None) == bool(failed)
    if mitigation and "age" not in failed:
        assert mitigation["skipped"].startswith("no failing attribute")  # sex, marital status: never
        assert result.gates["fairness"].verdict == "fail" and not result.eligible
    elif mitigation:
        assert mitigation["attribute"] == "age"
        assert set(mitigation["policy"]) >= {"25-35", "35-50"}
        assert result.gates["fairness"].mitigation == "threshold_optimizer:age"
        assert version.tags["decision_policy"] == "threshold_optimizer:age"
    # the most recent applications are never trained on: their labels have not matured
    assert evidence["data_window"][1] < "2025-12-01"
    assert _event_arrives(prefect_server, result.event_id, result.version)
    _mlflow_tells_what_and_why(configured, prefect_server, version, evidence)


def _mlflow_tells_what_and_why(uri: str, api: str, version: ModelVersion, evidence: dict[str, Any]) -> None:
    """What a reviewer sees in MLflow: a model-training experiment, a run named after its version and trigger,
    linked to its Prefect flow run, with the deployed rule's measures, the training set and the model card."""
    import httpx

    from closedloop.contract import load_contract
    from closedloop.registry import DESCRIPTION_LIMIT, EXPERIMENT_KIND_TAG, MODEL_TRAINING
    from tasks.train.model_card import model_card
    from tasks.train.register import file_digest

    got = httpx.get(f"{uri}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": "credit_synthetic"})
    tags = {t["key"]: t["value"] for t in got.raise_for_status().json()["experiment"]["tags"]}
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING  # the UI's "Model training" kind, not GenAI
    run = client(uri).get_run(version.run_id)
    start, end = (day[:7] for day in evidence["data_window"])
    assert run.info.run_name == f"train v{version.version} - drift retrain {start}..{end}"
    assert run.data.tags["closedloop.trigger_event_id"] == "evt-123"
    assert run.data.tags["closedloop.contract_fingerprint"] == load_contract(SYNTHETIC).fingerprint
    flow_run_id = run.data.tags["closedloop.prefect_flow_run_id"]
    ui = load_settings().prefect_ui_url
    assert run.data.tags["closedloop.prefect_flow_run"] == f"{ui}/runs/flow-run/{flow_run_id}"
    flow_run = prefect_api("GET", f"{api}/flow_runs/{flow_run_id}").json()  # the run that trained this version
    assert flow_run["parameters"]["params"]["trigger_event_id"] == "evt-123"
    metrics, report = run.data.metrics, evidence["report"]
    assert metrics["decision_threshold"] == pytest.approx(evidence["decision_threshold"])
    group_thresholds = evidence["gates"]["fairness"].get("mitigation")
    deployed = report["mitigation"] if group_thresholds else {"fairness": report["fairness"], **report["decision"]}
    assert metrics["test_expected_cost"] == pytest.approx(deployed["expected_cost"])
    for attribute in ("age", "sex", "marital_status"):
        for measure in ("demographic_parity_difference", "equalized_odds_difference", "disparate_impact"):
            value = deployed["fairness"][attribute][measure]
            assert metrics[f"fairness.{attribute}.{measure}"] == pytest.approx(value), (attribute, measure)
    (given,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training"}
    training_file = Path(json.loads(given.dataset.source)["uri"][7:])
    assert training_file.parent.name == "credit_synthetic" and given.dataset.digest == file_digest(training_file)
    assert json.loads(given.dataset.profile)["num_rows"] == evidence["training_rows"]
    card = model_card("credit_synthetic", evidence)
    description = version.description
    assert len(description) <= DESCRIPTION_LIMIT
    assert description == card or (
        card.startswith(description.split("\n\n*Cut to")[0]) and "model_card.md" in description
    )


def test_the_training_set_streams_to_parquet_in_time_order(configured: str) -> None:
    """Row groups appended batch by batch, in time order, with time splits, every feature and attribute; a frame
    retrieved in slices of 1,000 entity rows (one query each) is the same file."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from closedloop.contract import load_contract
    from tasks.shared.features import EVENT_TIMESTAMP, SPLIT, feature_names
    from tasks.train.tasks import build_training_set

    contract = load_contract(SYNTHETIC)
    settings = load_settings()
    now = datetime.now(UTC)
    training = build_training_set.fn(settings, contract, now, TrainingConfig())
    whole = pd.read_parquet(training.uri[7:])
    sliced = build_training_set.fn(
        settings.model_copy(update={"retrieval_rows": 1_000}), contract, now, TrainingConfig(), batch_rows=700
    )
    assert sliced.uri == training.uri and sliced.rows == training.rows > 3_000  # the same entity frame
    file = pq.ParquetFile(training.uri[7:])
    assert file.metadata.num_row_groups > training.rows // 1_000  # several batches per query, several queries
    frame = file.read().to_pandas()
    pd.testing.assert_frame_equal(frame, whole)
    assert len(frame) == training.rows and frame[EVENT_TIMESTAMP].is_monotonic_increasing
    assert set(feature_names(contract)) | {"age", "sex", "marital_status"} <= set(frame.columns)
    times = {name: frame.loc[frame[SPLIT] == name, EVENT_TIMESTAMP] for name in ("train", "validation", "test")}
    assert times["train"].max() <= times["validation"].min() and times["validation"].max() <= times["test"].min()
    ratio = frame["debt_to_income"].to_numpy()  # Feast's on-demand view, applied batch by batch
    expected = frame["loan_amount"].to_numpy() / frame["income"].replace(0, np.nan).to_numpy()
    assert np.allclose(ratio, expected, equal_nan=True)


def _event_arrives(api: str, event_id: str | None, version: str) -> bool:
    """Events reach the server through a background worker: poll for a little while."""
    import time

    body = {"filter": {"event": {"name": [events.TRAINED]}, "occurred": {"since": "2020-01-01T00:00:00Z"}}}
    for _ in range(40):
        found = prefect_api("POST", f"{api}/events/filter", json=body).json()["events"]
        if any(e["id"] == event_id and e["payload"]["version"] == version for e in found):
            return True
        time.sleep(0.5)
    return False


def test_a_challenger_is_compared_with_the_champion_on_the_same_rows(configured: str) -> None:
    first = train_evaluate(TrainParams(contract=SYNTHETIC))
    client(configured).set_registered_model_alias("credit_synthetic", CHAMPION, first.version)
    # on the Dask engine: trials through prefect-dask's task runner, the final fit through xgboost.dask, both on
    # a LocalCluster of two worker processes
    second = train_evaluate(
        TrainParams(contract=SYNTHETIC, training=TrainingConfig(seed=8, engine="dask"), tuning_trials=3)
    )
    gate = second.gates["champion"]
    assert gate.compared_with == first.version and gate.verdict in ("pass", "fail")
    evidence = read_evidence(configured, "credit_synthetic", second.version)
    # the search ran as three mapped tasks (on the Dask workers), judged on validation; the final fit used the
    # winner's parameters
    trials = evidence["report"]["tuning"]["trials"]
    assert len(trials) == 3 and len({str(t["params"]) for t in trials}) == 3
    best = max(trials, key=lambda t: t["validation_auc"])
    assert evidence["report"]["tuning"]["chosen"] == best["params"]
    logged = client(configured).get_run(client(configured).get_model_version("credit_synthetic", second.version).run_id)
    assert logged.data.params["max_depth"] == str(best["params"]["max_depth"])
    assert logged.data.params["engine"] == "dask"
    assert evidence["report"]["champion"]["version"] == first.version
    assert evidence["report"]["champion"]["lower"] <= evidence["report"]["champion"]["difference"]


def test_a_champion_that_cannot_be_loaded_blocks(configured: str) -> None:
    c = client(configured)
    run = c.create_run(c.get_experiment_by_name("credit_synthetic").experiment_id)
    broken = c.create_model_version(
        "credit_synthetic", source=f"runs:/{run.info.run_id}/no-model-here", run_id=run.info.run_id
    )
    c.set_registered_model_alias("credit_synthetic", CHAMPION, broken.version)
    result = train_evaluate(TrainParams(contract=SYNTHETIC))
    assert result.gates["champion"].verdict == "blocked"
    assert "cannot be loaded" in result.gates["champion"].reason
    assert result.eligible is False
    assert c.get_model_version("credit_synthetic", result.version).tags["gate.champion"] == "blocked"


def test_too_few_matured_labels_fail_clearly(configured: str) -> None:
    with pytest.raises(TrainingDataError, match="no matured labels by 2025-02-01|matured labelled rows by 2025-04"):
        train_evaluate(TrainParams(contract=SYNTHETIC, cutoff=datetime(2025, 2, 1, tzinfo=UTC)))


def test_a_contract_feature_missing_from_the_store_fails_clearly(configured: str, tmp_path: Path) -> None:
    """The contract gained a feature the store was never given: no model, a message naming the feature."""
    text = Path(SYNTHETIC).read_text()
    marker = "  - {name: sex, type: category"
    assert marker in text
    changed = text.replace(
        marker, "  - {name: bureau_score, type: float, source: profiles, min: 0, max: 1000, nullable: true}\n" + marker
    )
    contract = tmp_path / "contract.yaml"
    contract.write_text(changed)
    with pytest.raises(TrainingDataError, match="bureau_score"):
        train_evaluate(TrainParams(contract=str(contract)))
