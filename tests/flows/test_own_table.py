"""A raw public table brought in by its contract alone: UCI German Credit, as published, trained and gated.

The file is header-less, space separated, with coded values (``A11``); ``datasets/german_credit/contract.yaml`` was
drafted by ``closedloop contract init`` and reviewed in YAML only. The model closedloop trains is compared with
XGBoost fitted by hand on the raw file, with the same parameters, on the same split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from by_hand import auc_by_hand, split_of

from closedloop.contract import FairnessPolicy, contract_at
from closedloop.drafting import draft_contract
from closedloop.registry import client, read_evidence
from closedloop.settings import PROJECT_ROOT, load_settings
from tasks.promote import promotion

GERMAN = PROJECT_ROOT / "datasets" / "german_credit"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def german(
    prefect_server: str, mlflow_server: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """german.data ingested and one version trained, by the flows a user's commands run."""
    from flows.ingest_validate import IngestParams, ingest_validate
    from flows.train_evaluate import TrainParams, train_evaluate

    state = tmp_path_factory.mktemp("german-state")
    values = {"CLOSEDLOOP_STATE_DIR": str(state), "CLOSEDLOOP_MLFLOW_PORT": str(mlflow_server)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = load_settings()
        contract = str(GERMAN / "contract.yaml")
        ingested = ingest_validate(IngestParams(sources=[str(GERMAN / "german.data")], contract=contract))
        trained = train_evaluate(TrainParams(contract=contract))
        yield {"settings": settings, "ingested": ingested, "trained": trained}
        client(settings.mlflow_tracking_uri).delete_registered_model("german_credit")


def test_the_shipped_contract_is_the_draft_of_contract_init_with_names_and_meanings_given() -> None:
    drafted = draft_contract([GERMAN / "german.data"], label="21", sensitive=["9", "13", "20"]).contract
    shipped = contract_at(str(GERMAN / "contract.yaml"))
    table, draft = shipped.tables["applications"], drafted["tables"]["applications"]
    assert draft["file"]["delimiter"] == table.file.delimiter == "whitespace" and draft["file"]["header"] is False
    assert len(draft["file"]["columns"]) == len(table.file.columns or []) == 21
    assert draft["generated_key"] and table.generated_key and draft["as_of"] and table.as_of
    label = drafted["label"]
    assert (label["positive"], label["negative"]) == (shipped.label.positive, shipped.label.negative) == (2, 1)
    kinds = {c["name"]: c["type"] for c in drafted["columns"]}  # the draft names header-less fields col_1..
    for position, field in enumerate(table.file.columns or []):
        reviewed = next((c for c in shipped.columns if c.name == field), None)
        if reviewed is not None:  # the draft's type, or an int widened to float by the review
            kind = kinds[f"col_{position + 1}"]
            assert kind == reviewed.type or (kind, reviewed.type) == ("int", "float"), field


def test_german_credit_is_ingested_whole_from_the_raw_file(german: dict[str, Any]) -> None:
    ingested = german["ingested"]
    assert (ingested.rows_in, ingested.rows_accepted, ingested.rows_quarantined) == (1000, 1000, 0)


def test_the_model_matches_xgboost_fitted_by_hand_on_the_raw_file_and_its_sensitive_attributes_are_judged(
    german: dict[str, Any],
) -> None:
    trained, settings = german["trained"], german["settings"]
    assert trained.training_rows == 1000 and trained.version
    contract = contract_at(str(GERMAN / "contract.yaml"))
    evidence = read_evidence(settings.mlflow_tracking_uri, contract.name, trained.version)
    fairness = evidence["report"]["fairness"]
    assert set(fairness) == {"personal_status_sex", "sex", "age", "foreign_worker"}
    judged = {a for a, r in fairness.items() if r["verdict"] in ("pass", "fail")}
    assert judged == {"personal_status_sex", "sex", "age"}, fairness
    # the one too small to judge passes the gate only by the contract's waiver, which the version keeps
    assert fairness["foreign_worker"]["waiver"].startswith("37 of the 1,000 applicants are not foreign workers")
    assert "not judged, waived: foreign_worker" in trained.gates["fairness"].reason

    # by hand: the raw file, the codebook's meanings, XGBoost with the run's parameters on the run's split
    raw = pd.read_csv(
        GERMAN / "german.data", sep=r"\s+", header=None, names=contract.tables["applications"].file.columns
    )
    inputs = list(contract.model_inputs)
    for column in inputs:
        if column.codes:
            raw[column.name] = pd.Categorical(raw[column.name].map(column.codes), categories=column.categories)
    names = [c.name for c in inputs]
    (training_file,) = (settings.state_dir / "training" / contract.name).glob("training-*.parquet")
    split = split_of(raw, pd.read_parquet(training_file), [*names, contract.label.column])
    y = (raw[contract.label.column] == contract.label.positive).astype(int).to_numpy()
    by_hand = auc_by_hand(raw[names], y, split)
    assert abs(trained.metrics["roc_auc"] - by_hand) <= 0.01, (trained.metrics["roc_auc"], by_hand)


def test_a_reviewed_wider_limit_is_deployed_only_with_a_persons_approval_and_then_scores_raw_rows(
    german: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A risk team widens a fairness limit for this model: recorded, approved by a person, sealed, then served."""
    from fastapi.testclient import TestClient

    from flows.package_deploy import DeployParams, package_deploy
    from flows.train_evaluate import TrainParams, train_evaluate
    from serving.app import create_app

    settings = german["settings"]
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(settings.mlflow_port))
    contract_file = str(GERMAN / "contract.yaml")
    contract = contract_at(contract_file)
    # 1,000 applicants give wide intervals on the age bands' gaps: the reviewer accepts up to 0.3 for this model,
    # with one threshold for everyone (no group thresholds by age)
    reviewed = FairnessPolicy(
        max_demographic_parity_difference=0.3, max_equalized_odds_difference=0.3, mitigation="none"
    )
    again = train_evaluate(TrainParams(contract=contract_file, fairness=reviewed))
    assert again.eligible and again.gates["fairness"].verdict == "pass", again.gates
    evidence = read_evidence(settings.mlflow_tracking_uri, contract.name, again.version)
    assert evidence["limits"]["loosened"] == ["max_demographic_parity_difference", "max_equalized_odds_difference"]
    deployed = package_deploy(
        DeployParams(
            contract=contract_file,
            version=again.version,
            require_approval=False,  # cannot waive it: the limits are looser than the contract's
            approved_by="credit risk committee",
            approval_comment="age gap reviewed: applicants under 25 have shorter histories; limit for this model only",
        )
    )
    assert deployed.promoted and deployed.champion == again.version, deployed.reason
    assert deployed.approval and deployed.approval["required_because"].startswith(
        "judged by limits looser than its contract's"
    )
    history = promotion.history(settings.mlflow_tracking_uri, contract.name, again.version)
    assert [e["action"] for e in history] == ["approval", "promoted"]

    # scored by the service from the raw file's own values: codes as written, the label and sensitive columns absent
    raw = pd.read_csv(
        GERMAN / "german.data", sep=r"\s+", header=None, names=contract.tables["applications"].file.columns
    )
    inputs = [c.name for c in contract.model_inputs]
    token = "german-token"
    with TestClient(create_app(settings, contract, token, refresh_seconds=60)) as http:
        ready = http.get("/readyz").json()
        assert ready["ready"] and ready["model_version"] == again.version and "degraded" not in ready, ready
        rows = [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in raw[inputs].head(5).to_dict("records")
        ]
        key = contract.entity.join_key
        answers = [
            http.post("/v1/score", json={key: i, **row}, headers={"Authorization": f"Bearer {token}"})
            for i, row in enumerate(rows)
        ]
    assert [a.status_code for a in answers] == [200] * 5, answers[0].text
    scored = [a.json() for a in answers]
    assert all(0 < s["probability"] < 1 and s["model_version"] == again.version for s in scored)
    # the same rows through the registered model, as the codebook reads them: the same probabilities
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    model = mlflow.xgboost.load_model(f"models:/{contract.name}/{again.version}")
    frame = raw[inputs].head(5).copy()
    for column in contract.model_inputs:
        if column.codes:
            frame[column.name] = pd.Categorical(frame[column.name].map(column.codes), categories=column.categories)
    expected = model.predict_proba(frame[list(model.feature_names_in_)])[:, 1]
    assert [s["probability"] for s in scored] == pytest.approx(list(expected), abs=1e-6)
