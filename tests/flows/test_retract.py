"""Retracting an ingested batch on a real Prefect server, with Feast on DuckDB + SQLite in a temporary state folder."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import prefect_api

from closedloop import events, storage
from closedloop.contract import load_contract
from closedloop.lake import CREATED, Lake
from closedloop.settings import Settings
from feature_repo.store import open_store
from flows.ingest_validate import IngestParams, ingest_validate
from flows.retract import RetractParams, retract
from samples.synthetic import SyntheticConfig, write_synthetic

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = REPO / "datasets/credit_synthetic/contract.yaml"
CONTRACT = load_contract(SYNTHETIC)
NEW_CUSTOMER = 999_999  # a customer whose only statement is in the poisoned file
FEATURES = ["credit_history:utilisation", "credit_history_history:utilisation_mean_6m"]

pytestmark = pytest.mark.integration


def _ingested(settings: Settings) -> tuple[Lake, pd.DataFrame]:
    """A small synthetic data set ingested; and the latest stored statement of five of its customers."""
    lake = Lake.of(settings.lake_uri, CONTRACT.name)
    write_synthetic(SyntheticConfig(customers=120, months=2), lake.landing)
    ingest_validate(IngestParams(contract=str(SYNTHETIC), sources=[storage.join(lake.landing, "credit_history")]))
    history = lake.read_offline("credit_history").sort_values("snapshot_at")
    return lake, history.groupby("customer_id").tail(1).head(5).drop(columns=[CREATED]).reset_index(drop=True)


def _send(lake: Lake, name: str, frame: pd.DataFrame) -> str:
    """A credit_history file into the landing zone; returns its URI."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return storage.write_bytes(storage.join(lake.landing, "credit_history", name), buffer.getvalue())


def _statements(latest: pd.DataFrame, utilisation: float) -> pd.DataFrame:
    """A later statement of each customer in ``latest``, and one of a new customer, all with ``utilisation``."""
    now = pd.Timestamp(datetime.now(UTC))
    later = latest.assign(snapshot_at=latest["snapshot_at"] + (now - latest["snapshot_at"]) / 2)
    new = later.head(1).assign(customer_id=NEW_CUSTOMER)
    return pd.concat([later, new], ignore_index=True).assign(utilisation=utilisation)


def _online(settings: Settings, customers: list[int]) -> dict[str, list[Any]]:
    store = open_store(settings, CONTRACT)
    rows = [{"customer_id": c} for c in customers]
    return store.get_online_features(features=FEATURES, entity_rows=rows).to_dict()


def _ingest(path: str, materialize: bool = True) -> Any:
    result = ingest_validate(IngestParams(contract=str(SYNTHETIC), sources=[path], materialize=materialize))
    (batch,) = result.batches
    return batch


def test_a_retracted_batch_leaves_both_stores_and_its_rows_can_be_sent_again(
    prefect_server: str, settings: Settings
) -> None:
    lake, latest = _ingested(settings)
    customers = [int(c) for c in latest["customer_id"]]
    before = _online(settings, customers)
    assert before["utilisation"] == pytest.approx(latest["utilisation"].tolist())
    stored = lake.read_offline("credit_history")

    sent = _send(lake, "credit_history-poisoned.parquet", _statements(latest, 1.45))
    poisoned = _ingest(sent)
    assert (poisoned.status, poisoned.rows_accepted) == ("accepted", 6)
    assert _online(settings, [*customers, NEW_CUSTOMER])["utilisation"] == [1.45] * 6

    result = retract(RetractParams(batch_id=poisoned.batch_id, reason="utilisation sent in percent"))
    assert (result.rows, result.rows_by_table) == (6, {"credit_history": 6, "credit_history_history": 6})
    assert result.online_views == {"credit_history": 6, "credit_history_history": 6}
    assert all(path.endswith(f"/{poisoned.batch_id}.parquet") for path in result.objects)
    assert len(storage.list_objects(result.archive)) == len(result.objects)  # moved, not deleted
    # the offline store holds what it held before the poisoned file
    after = lake.read_offline("credit_history")
    assert len(after) == len(stored) and 1.45 not in set(after["utilisation"])
    # the online store serves each customer's previous statement again, and nothing of the new customer
    online = _online(settings, [*customers, NEW_CUSTOMER])
    assert online["utilisation"] == pytest.approx([*before["utilisation"], None])
    assert online["utilisation_mean_6m"] == pytest.approx([*before["utilisation_mean_6m"], None])
    record = lake.read_ledger(poisoned.batch_id)
    assert record is not None and record["status"] == "accepted" and record["rows_accepted"] == 6
    assert (record["retracted"]["state"], record["retracted"]["reason"]) == ("done", "utilisation sent in percent")

    # the recovery path: the corrected file. Its keys were the retracted rows': they are new rows again
    corrected = _ingest(_send(lake, "credit_history-corrected.parquet", _statements(latest, 0.3)))
    assert (corrected.status, corrected.rows_accepted, corrected.rows_duplicate) == ("accepted", 6, 0)
    assert _online(settings, [*customers, NEW_CUSTOMER])["utilisation"] == [0.3] * 6
    # the retracted file's bytes stay ledgered: sent again, they are recognised and skipped
    copy = storage.join(lake.landing, "credit_history", "credit_history-poisoned-again.parquet")
    again = _ingest(storage.write_bytes(copy, storage.read_bytes(sent)), materialize=False)
    assert again.status == "duplicate" and again.rows_in == 0 and poisoned.batch_id in (again.reason or "")

    # counts reconcile: every batch's rows are accounted for, and the store holds the unretracted ones
    ledger = lake.ledger_records()
    assert all(r["rows_in"] == r["rows_accepted"] + r["rows_quarantined"] + r["rows_duplicate"] for r in ledger)
    kept = sum(r["rows_accepted"] for r in ledger if r["table"] == "credit_history" and not r.get("retracted"))
    assert len(lake.read_offline("credit_history")) == kept == len(stored) + 6

    emitted: list[dict[str, Any]] = []
    for _ in range(40):  # events reach the server through a background worker
        body = {"filter": {"event": {"name": [events.RETRACTED]}}, "limit": 10}
        found = prefect_api("POST", f"{prefect_server}/events/filter", json=body).json()["events"]
        emitted = [e for e in found if e["id"] == result.event_id]
        if emitted:
            break
        time.sleep(0.5)
    assert emitted and emitted[0]["payload"]["batch_id"] == poisoned.batch_id


def test_a_retraction_stopped_before_the_online_refresh_is_finished_by_the_flow(
    prefect_server: str, settings: Settings
) -> None:
    lake, latest = _ingested(settings)
    customers = [int(c) for c in latest["customer_id"]]
    before = _online(settings, customers)["utilisation"]
    poisoned = _ingest(_send(lake, "credit_history-poisoned.parquet", _statements(latest, 1.45)))
    lake.retract(poisoned.batch_id, "utilisation sent in percent", datetime.now(UTC))  # then the run died
    assert _online(settings, customers)["utilisation"] == [1.45] * 5  # archived, but still served

    result = retract(RetractParams(batch_id=poisoned.batch_id, reason="a second try"))
    assert result.resumed and result.moved == [] and result.reason == "utilisation sent in percent"
    assert _online(settings, customers)["utilisation"] == pytest.approx(before)
    with pytest.raises(ValueError, match=f"batch {poisoned.batch_id} was retracted already"):
        retract(RetractParams(batch_id=poisoned.batch_id, reason="a third try"))
