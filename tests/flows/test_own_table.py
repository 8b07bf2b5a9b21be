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

from closedloop.contract import contract_at
from closedloop.drafting import draft_contract
from closedloop.registry import client, read_evidence
from closedloop.settings import PROJECT_ROOT, load_settings

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
