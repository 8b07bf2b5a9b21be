"""The ingest/validate flow on a real Prefect server, with Feast on DuckDB + SQLite in a temporary state folder."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import prefect_api

from closedloop import events, failpoints, storage
from closedloop.contract import load_contract
from closedloop.lake import Lake
from closedloop.settings import Settings
from feature_repo.definitions import model_service_name
from feature_repo.store import open_store
from flows.ingest_validate import IngestParams, ingest_validate
from samples.synthetic import SyntheticConfig, write_synthetic
from samples.taiwan import write_taiwan

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = REPO / "datasets/credit_synthetic/contract.yaml"
TAIWAN = REPO / "datasets/taiwan_credit_default/contract.yaml"

pytestmark = pytest.mark.integration


def _events(api: str, name: str) -> list[dict[str, object]]:
    body = {"filter": {"event": {"name": [name]}, "occurred": {"since": "2020-01-01T00:00:00Z"}}, "limit": 50}
    return list(prefect_api("POST", f"{api}/events/filter", json=body).json()["events"])


def test_a_year_of_synthetic_data_with_a_mixed_batch(prefect_server: str, settings: Settings) -> None:
    contract = load_contract(SYNTHETIC)
    lake = Lake.of(settings.lake_uri, contract.name)
    write_synthetic(SyntheticConfig(customers=3_000, months=4), lake.landing)
    # a mixed batch: two bad rows among good ones, arriving as CSV from another system
    apps = pd.read_parquet(sorted((Path(lake.landing[7:]) / "applications").iterdir())[-1])
    extra = apps.head(25).copy()
    extra["application_id"] = extra["application_id"] + 7  # new applications of the same customers
    extra["loan_purpose"] = extra["loan_purpose"].astype(object)
    extra.loc[extra.index[3], "loan_purpose"] = "yacht"
    extra.loc[extra.index[5], "loan_amount"] = -1.0
    extra["applied_at"] = extra["applied_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    storage.write_bytes(
        storage.join(lake.landing, "applications", "applications-partner.csv"), extra.to_csv(index=False).encode()
    )

    result = ingest_validate(IngestParams(contract=str(SYNTHETIC)))
    assert result.rows_in == result.rows_accepted + result.rows_quarantined + result.rows_duplicate
    assert result.rows_quarantined == 2 and result.rows_duplicate == 0
    mixed = next(b for b in result.batches if b.uri.endswith("applications-partner.csv"))
    assert (mixed.status, mixed.rows_accepted, mixed.rows_quarantined) == ("partial", 23, 2)
    assert set(result.materialized_views) == {"profiles", "profiles_policy", "credit_history", "credit_history_history"}
    ledger = lake.ledger_records()
    assert sum(r["rows_in"] for r in ledger) == result.rows_in

    # online features of an ingested customer, through the versioned FeatureService
    store = open_store(settings, contract)
    service = store.get_feature_service(model_service_name(contract))
    row = apps.iloc[0]
    online = store.get_online_features(
        features=service,
        entity_rows=[
            {
                "customer_id": int(row["customer_id"]),
                "loan_amount": float(row["loan_amount"]),
                "loan_term_months": int(row["loan_term_months"]),
                "loan_purpose": row["loan_purpose"],
                "channel": row["channel"],
            }
        ],
    ).to_dict()
    history = lake.read_offline("credit_history")
    latest = history[history["customer_id"] == row["customer_id"]].sort_values("snapshot_at").iloc[-1]
    assert online["utilisation"] == [pytest.approx(latest["utilisation"])]
    assert online["debt_to_income"][0] == pytest.approx(row["loan_amount"] / online["income"][0])
    assert online["utilisation_mean_6m"][0] is not None

    # the same landing zone again: nothing new
    again = ingest_validate(IngestParams(contract=str(SYNTHETIC)))
    assert {b.status for b in again.batches} == {"duplicate"} and again.rows_in == 0

    # the run told the world: an event with the counts, and a markdown artifact
    emitted: list[dict[str, object]] = []
    for _ in range(40):  # events reach the server through a background worker
        emitted = [e for e in _events(prefect_server, events.INGESTED) if e["id"] == result.event_id]
        if emitted:
            break
        time.sleep(0.5)
    assert emitted and emitted[0]["payload"]["rows_quarantined"] == 2  # type: ignore[index]
    artifacts = prefect_api(
        "POST", f"{prefect_server}/artifacts/filter", json={"artifacts": {"key": {"any_": ["ingest-credit-synthetic"]}}}
    ).json()
    assert any("2 quarantined" in a["data"] for a in artifacts)


def test_replay_after_the_contract_is_fixed(prefect_server: str, settings: Settings, tmp_path: Path) -> None:
    lake = Lake.of(settings.lake_uri, "credit_synthetic")
    config = SyntheticConfig(customers=300, months=2, start="2025-01", drift_start="2025-02", scenario="new_category")  # type: ignore[arg-type]
    write_synthetic(config, lake.landing)
    # a quarter of the second month's applications carry the unseen purpose
    result = ingest_validate(
        IngestParams(contract=str(SYNTHETIC), materialize=False, sources=[storage.join(lake.landing, "applications")])
    )
    partial = [b for b in result.batches if b.rows_quarantined]
    assert partial, "the new_category scenario should leave rows in quarantine"
    held = sum(b.rows_quarantined for b in partial)

    # the business confirms the new loan purpose: a new contract version admits it
    fixed = tmp_path / "contract.yaml"
    fixed.write_text(
        SYNTHETIC.read_text().replace("version: 1", "version: 2").replace("business]}", "business, green_energy]}")
    )
    replayed = ingest_validate(
        IngestParams(contract=str(fixed), replay=[b.batch_id for b in partial], materialize=False)
    )
    assert replayed.rows_in == held and replayed.rows_accepted == held and replayed.rows_quarantined == 0
    record = lake.read_reason(partial[0].batch_id)
    assert record["replays"][0]["status"] == "accepted"
    assert storage.exists(lake.quarantine(partial[0].batch_id, "rejected.parquet"))  # kept, never deleted


def test_the_taiwan_data_flows_through_the_same_pipeline(prefect_server: str, settings: Settings) -> None:
    contract = load_contract(TAIWAN)
    lake = Lake.of(settings.lake_uri, contract.name)
    write_taiwan(lake.landing)
    result = ingest_validate(IngestParams(contract=str(TAIWAN)))
    assert result.rows_in == 30_000 * 3 + 180_000
    assert result.rows_quarantined == 0, [b.reason or b.failing for b in result.batches if b.rows_quarantined]
    store = open_store(settings, contract)
    online = store.get_online_features(
        features=store.get_feature_service(model_service_name(contract)), entity_rows=[{"customer_id": 1}]
    ).to_dict()
    # client 1: PAY_0=2, PAY_2=2, then -1, -1, -2, -2; September bill 3913, limit 20000
    assert online["pay_status"] == [2] and online["pay_status_max_6m"] == [2.0]
    assert online["bill_to_limit"][0] == pytest.approx(3913 / 20000)
    assert "sex" not in online and "age" not in online  # sensitive attributes are never served


def test_an_unknown_replay_id_is_explained(prefect_server: str, settings: Settings) -> None:
    with pytest.raises(storage.StorageError, match="no quarantined batch 'nope'"):
        ingest_validate(IngestParams(contract=str(SYNTHETIC), replay=["nope"]))


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def test_a_flow_run_killed_after_its_commit_is_finished_by_the_next_run(
    prefect_server: str, settings: Settings
) -> None:
    """kill -9 of a real flow run between a batch's ledger record and its move into place, then the next run."""
    contract = load_contract(SYNTHETIC)
    lake = Lake.of(settings.lake_uri, contract.name)
    write_synthetic(SyntheticConfig(customers=200, months=2), lake.landing)
    landing = Path(lake.landing[len("file://") :])
    kept = sorted((landing / "credit_history").iterdir())[-1]  # the latest month: within the ttl
    for path in [p for p in landing.rglob("*.parquet") if p != kept]:
        path.unlink()  # one batch of a table the online store serves
    code = (
        "from flows.ingest_validate import IngestParams, ingest_validate\n"
        f"ingest_validate(IngestParams(contract={str(SYNTHETIC)!r}))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_server, failpoints.ENV: "batch-committed"}
    crashed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    (committed,) = lake.ledger_records()  # the first batch is committed, nothing of it is in place yet
    assert lake.read_offline(committed["table"]).empty

    result = ingest_validate(IngestParams(contract=str(SYNTHETIC)))

    first = next(b for b in result.batches if b.batch_id == committed["batch_id"])
    assert first.status == "duplicate"  # its rows were stored by the crashed run, published by this one
    stored = lake.read_offline(committed["table"])
    assert len(stored) == committed["rows_accepted"] + sum(
        b.rows_accepted for b in result.batches if b.table == committed["table"]
    )
    assert {"credit_history", "credit_history_history"} <= {*result.materialized_views}  # the online store too
    customer = int(stored.sort_values("snapshot_at").iloc[-1]["customer_id"])
    store = open_store(settings, contract)
    online = store.get_online_features(features=["credit_history:utilisation"], entity_rows=[{"customer_id": customer}])
    assert online.to_dict()["utilisation"][0] is not None
    assert storage.list_objects(storage.join(lake.root, "staging")) == []
    records = lake.ledger_records()
    assert sum(r["rows_in"] for r in records) == sum(
        r["rows_accepted"] + r["rows_quarantined"] + r.get("rows_duplicate", 0) for r in records
    )
