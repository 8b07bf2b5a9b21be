"""The retract flow: a batch found wrong after ingestion leaves the offline store (archived) and the online store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event
from pydantic import BaseModel, Field

from closedloop import events
from closedloop.contract import contract_at
from closedloop.lake import BATCH_ID_PATTERN, Lake
from closedloop.locks import lake_lock
from closedloop.settings import load_settings
from tasks.ingest.tasks import refresh_retracted_online, retract_batch, utc_now


class RetractParams(BaseModel):
    """Which batch to retract and why; Prefect renders this as the run form in the UI."""

    batch_id: str = Field(
        min_length=1, pattern=BATCH_ID_PATTERN, description="the ledgered batch id (a replay is <id>-r<n>)"
    )
    reason: str = Field(min_length=1, description="why the batch is retracted (kept in its ledger record)")
    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")


class RetractResult(BaseModel):
    """What a retraction did. The ledger record keeps the batch's status and counts, plus ``retracted``."""

    dataset: str
    batch_id: str
    table: str | None
    status: str  # the batch's ingest status, unchanged
    replay_of: str | None = None
    reason: str  # the retraction's (the first one given when a half-done retraction is finished)
    retracted_at: datetime
    archive: str  # archive/<batch_id>/: the moved objects, under their paths in the lake
    objects: list[str]  # every object of the batch, as paths in the lake
    moved: list[str]  # those this run moved (fewer when it finished a half-done retraction)
    rows: int  # rows of the batch's table taken out of the offline store
    rows_by_table: dict[str, int]  # the same per offline table (aggregate history tables included)
    resumed: bool  # this run finished a retraction a crashed run had started
    replays: list[dict[str, Any]]  # the batch's replays: stored batches of their own, not retracted with it
    quarantine: str | None  # the batch's rejected rows, still in quarantine
    online_views: dict[str, int]  # online view -> entities of the batch it served, refreshed
    event_id: str | None = None


@flow(name="retract_batch", log_prints=False)
def retract(params: RetractParams) -> RetractResult:
    """Retract a batch under the lake's lock: archive its rows, ledger it, refresh the online store, tell the world.

    The lock keeps ingests out while the batch's objects move and its views are loaded again. Only this batch's
    own staged objects are published (a batch committed by a crashed run, see ``Lake.retract``); the other
    leftovers of crashed ingests are for the next ingest's sweep, which also loads them into the online store.
    """
    logger = get_run_logger()
    settings = load_settings()
    contract = contract_at(str(params.contract or settings.contract))
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    with lake_lock(lake.root, settings.postgres_url, settings.lake_lock_wait_s):
        now = utc_now()
        retraction = retract_batch(lake, params.batch_id, params.reason, now)
        if retraction["resumed"]:
            logger.warning("batch %s: finishing the retraction started at %s", params.batch_id, retraction["at"])
        online = refresh_retracted_online(settings, contract, lake, retraction, now)
        lake.finish_retraction(params.batch_id, sorted(online), now)
    result = RetractResult(
        dataset=contract.name,
        batch_id=params.batch_id,
        table=retraction["table"],
        status=retraction["status"],
        replay_of=retraction["replay_of"],
        reason=retraction["reason"],
        retracted_at=retraction["at"],
        archive=retraction["archive"],
        objects=retraction["objects"],
        moved=retraction["moved"],
        rows=retraction["rows"],
        rows_by_table=retraction["rows_by_table"],
        resumed=retraction["resumed"],
        replays=retraction["replays"],
        quarantine=retraction["quarantine"],
        online_views=online,
    )
    stored_replays = [r["batch_id"] for r in result.replays if r["rows_accepted"] and r["retracted"] != "done"]
    event = emit_event(
        event=events.RETRACTED,
        resource=events.dataset_resource(contract.name),
        payload={
            "batch_id": result.batch_id,
            "table": result.table,
            "rows": result.rows,
            "rows_by_table": result.rows_by_table,
            "reason": result.reason,
            "online_views": sorted(online),
            "replays_still_stored": stored_replays,
        },
    )
    result.event_id = str(event.id) if event else None
    logger.info("batch %s retracted: %d rows archived in %s", result.batch_id, result.rows, result.archive)
    return result
