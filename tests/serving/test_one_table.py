"""A one-table contract end to end on real components: trained through Feast and MLflow, scored in batch and online.

The generated table holds the inputs, two sensitive attributes and the label, with some labels still empty; no
feature table, so nothing is stored online: the service scores from the request alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from one_table import CONTRACT_YAML, flat_contract, flat_rows, write_flat

from closedloop import seal
from closedloop.contract import FairnessPolicy, parse_contract
from closedloop.registry import client, read_evidence
from closedloop.settings import load_settings
from serving.app import create_app, request_model
from tasks.promote import promotion

TOKEN = "flat-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS, UNLABELLED = 2_000, 150


@pytest.fixture(scope="module")
def flat(prefect_server: str, mlflow_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The flat table in the offline store, its Feast repository applied, one model trained and made champion."""
    from feature_repo.definitions import build_repo
    from feature_repo.store import offline_root, open_store
    from flows.train_evaluate import TrainParams, train_evaluate
    from tasks.train.fit import TrainingConfig

    state = tmp_path_factory.mktemp("flat-state")
    values = {"CLOSEDLOOP_STATE_DIR": str(state), "CLOSEDLOOP_MLFLOW_PORT": str(mlflow_server)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        settings = load_settings()
        path, contract = flat_contract(state)
        rows = flat_rows(ROWS, UNLABELLED)
        write_flat(settings.lake_uri, contract, rows)
        open_store(settings, contract).apply(build_repo(contract, offline_root(settings, contract)).objects)
        trained = train_evaluate(
            TrainParams(
                contract=str(path),
                training=TrainingConfig(n_estimators=60, min_rows=300),
                fairness=FairnessPolicy(mitigation="none", max_fairness_worsening=0.05),
            )
        )
        keys = seal.key_files(settings)  # made champion as the deploy flow does: sealed
        promotion.promote(settings.mlflow_tracking_uri, contract.name, trained.version, None, keys, by="test")
        yield {"settings": settings, "path": path, "contract": contract, "rows": rows, "trained": trained}
        client(settings.mlflow_tracking_uri).delete_registered_model(contract.name)


@pytest.mark.integration
def test_a_flat_table_trains_with_every_sensitive_attribute_judged(flat: dict[str, Any]) -> None:
    trained, settings = flat["trained"], flat["settings"]
    assert trained.training_rows == ROWS - UNLABELLED
    assert trained.metrics["roc_auc"] > 0.65
    no_table = "no stored feature table: every input arrives with the application"
    assert trained.gates["feature_coverage"].reason == no_table
    evidence = read_evidence(settings.mlflow_tracking_uri, "flat_credit", trained.version)
    assert evidence["unlabelled_rows"] == UNLABELLED
    fairness = evidence["report"]["fairness"]
    assert set(fairness) == {"age", "sex"}
    assert {a: r["verdict"] for a, r in fairness.items() if r["verdict"] not in ("pass", "fail")} == {}
    assert "not judged" not in trained.gates["fairness"].reason
    policy = evidence["fairness_policy"]
    assert policy["source"]["mitigation"] == "override" and policy["limits"]["mitigation"] == "none"
    assert policy["source"]["min_group_rows"] == "contract" and policy["limits"]["min_group_rows"] == 40
    assert policy["source"]["max_demographic_parity_difference"] == "default"
    assert policy["override"] is True
    version = client(settings.mlflow_tracking_uri).get_model_version("flat_credit", trained.version)
    assert version.tags["fairness.override"] == "true"
    run = client(settings.mlflow_tracking_uri).get_run(version.run_id)
    assert run.data.params["fairness.min_group_rows"] == "40"
    assert run.data.params["fairness.mitigation.source"] == "override"


@pytest.mark.integration
def test_a_flat_table_is_scored_in_batch_and_by_the_service_alike(
    flat: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.batch_score import BatchScoreParams, batch_score

    settings, rows = flat["settings"], flat["rows"]
    monkeypatch.setenv("CLOSEDLOOP_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("CLOSEDLOOP_MLFLOW_PORT", str(settings.mlflow_port))
    result = batch_score(
        BatchScoreParams(
            contract=str(flat["path"]),
            start=datetime(2025, 1, 1, tzinfo=UTC),
            end=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    assert result.rows == ROWS and result.uri  # the rows still waiting for their label are scored too
    scores = pd.read_parquet(result.uri[7:]).set_index("application_id")
    waiting = rows.loc[rows["defaulted"].isna(), "application_id"].tolist()
    assert set(waiting) <= set(scores.index) and scores["probability"].between(0, 1).all()

    app = create_app(settings, flat["contract"], TOKEN, refresh_seconds=60)
    fields = ["application_id", "income", "loan_amount", "term_months", "purpose"]
    with TestClient(app) as http:
        assert http.get("/readyz").status_code == 200
        picked = rows.set_index("application_id").loc[waiting[:3]].reset_index()
        records = picked[fields].to_dict("records")
        bodies = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in records]
        answers = http.post("/v1/score/batch", json={"applications": bodies}, headers=AUTH)
        assert answers.status_code == 200, answers.text
        for body, answer in zip(bodies, answers.json(), strict=True):
            assert answer["probability"] == pytest.approx(scores.loc[body["application_id"], "probability"], abs=1e-6)
        # a key the table never held: nothing is looked up online, the request carries every input
        unseen = http.post("/v1/score", json={**bodies[0], "application_id": 10**9}, headers=AUTH)
        assert unseen.status_code == 200, unseen.text
        assert unseen.json()["probability"] == pytest.approx(answers.json()[0]["probability"], abs=1e-9)
        # the request's own values reach the model, through the ratio too: a loan of 1.2 incomes is riskier
        small, large = (
            http.post("/v1/score", json={**bodies[0], "loan_amount": bodies[0]["income"] * share}, headers=AUTH)
            for share in (0.05, 1.2)
        )
        assert small.json()["probability"] < large.json()["probability"]


def test_the_request_is_read_as_ingest_reads_the_table() -> None:
    """Null tokens, missing codes, file codes and derived columns in a request, by closedloop.source's rules."""
    data = CONTRACT_YAML.replace(
        "  - {name: purpose, type: category, source: applications, categories: [car, home, other]}",
        "  - {name: purpose, type: category, source: applications, categories: [car, home, other],\n"
        "     codes: {P1: car, P2: home, P3: other}}\n"
        "  - {name: days_employed, type: float, source: applications, nullable: true, missing_codes: [365243],\n"
        "     exclude: raw day count, null_tokens: [NA]}\n"
        "  - {name: years_employed, type: float, source: applications, nullable: true,\n"
        '     formula: "-days_employed / 365.25"}',
    )
    import yaml

    contract = parse_contract(yaml.safe_load(data))
    model = request_model(contract)
    assert "days_employed" in model.model_fields  # the operand is sent; the derived input is computed
    base = {"application_id": 1, "income": 30_000.0, "loan_amount": 5_000.0, "term_months": 12}
    read = model.model_validate({**base, "purpose": "P2", "days_employed": -730.5}).model_dump()
    assert read["purpose"] == "home" and read["years_employed"] == pytest.approx(2.0)
    unknown = model.model_validate({**base, "purpose": "car", "days_employed": 365243}).model_dump()
    assert unknown["days_employed"] is None and unknown["years_employed"] is None
    token = model.model_validate({**base, "purpose": "car", "days_employed": "NA"}).model_dump()
    assert token["days_employed"] is None
    with pytest.raises(ValueError, match="purpose"):
        model.model_validate({**base, "purpose": "P9", "days_employed": 1.0})
