"""The ingest stage's Prefect tasks: batches into the lake, replays, the online store, retractions.

What a batch goes through is in :mod:`tasks.ingest.batch` (and :mod:`tasks.ingest.replay` for replays); these
tasks give it Prefect's retries, names and run records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from closedloop import storage
from closedloop.contract import Contract
from closedloop.lake import Lake
from closedloop.landing import BatchRef, identify
from closedloop.settings import Settings
from feature_repo.definitions import build_repo
from feature_repo.online_delete import delete_entities
from feature_repo.online_write import materialize_view
from feature_repo.store import offline_root, open_store
from tasks.ingest import batch, replay
from tasks.ingest.batch import CHUNK_ROWS, BatchOutcome, earliest_new_events, earliest_published

logger = logging.getLogger(__name__)

__all__ = ["BatchOutcome", "earliest_new_events", "earliest_published"]


def find_batches(
    sources: Iterable[str], landing_uri: str, contract: Contract, endpoint_url: str | None
) -> list[BatchRef]:
    """Batches under each source (a file, or a folder holding ``<table>/`` folders or ``<table>-*`` files).

    With no source, the dataset's landing zone.
    """
    refs: list[BatchRef] = []
    for source in list(sources) or [landing_uri]:
        root = str(storage.parse(source))
        uris = storage.list_objects(root, endpoint_url)
        if uris == [root]:  # a single file: its table comes from its folder or its name
            parent = (
                root.rsplit("/", 2)[0]
                if identify(root, root.rsplit("/", 2)[0], contract).table
                else root.rsplit("/", 1)[0]
            )
            refs.append(identify(root, parent, contract))
            continue
        if not uris and source != landing_uri:
            raise storage.StorageError(f"{source}: no such file, or a folder with no batches")
        refs.extend(identify(uri, root, contract) for uri in uris)
    return refs


@task(name="ingest_batch", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def ingest_batch(
    ref: BatchRef, contract: Contract, lake: Lake, now: datetime, chunk_rows: int = CHUNK_ROWS
) -> BatchOutcome:
    """Validate one landing batch; accepted rows to the offline store, the rest to quarantine; ledger it."""
    return batch.ingest(ref, contract, lake, now, chunk_rows)


@task(name="replay_quarantined", cache_policy=NO_CACHE)
def replay_quarantined(
    quarantined_id: str, contract: Contract, lake: Lake, now: datetime, chunk_rows: int = CHUNK_ROWS
) -> BatchOutcome:
    """Re-validate a quarantined batch (see :func:`tasks.ingest.replay.replay`)."""
    return replay.replay(quarantined_id, contract, lake, now, chunk_rows)


@task(name="materialize_features", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def materialize_features(
    settings: Settings, contract: Contract, since: dict[str, datetime], now: datetime
) -> list[str]:
    """Apply the contract's Feast definitions and load new rows into the online store.

    ``since`` maps each offline table that received rows to its earliest new event time; each affected view is
    materialized from there to now, so a late batch of old events is still picked up (plain
    ``materialize_incremental`` only moves forward from its last end date and would miss it).
    """
    repo = build_repo(contract, offline_root(settings, contract))
    store = open_store(settings, contract)
    store.apply(repo.objects)
    done = []
    for view in repo.online_views:
        table = repo.view_tables[view.name]
        start = since.get(table)
        if start is None:
            continue
        window_start = max(start, now - view.ttl) if view.ttl else start
        materialize_view(store, view.name, window_start - timedelta(seconds=1), now)
        done.append(view.name)
    return done


def utc_now() -> datetime:
    return datetime.now(UTC)


@task(name="retract_batch", cache_policy=NO_CACHE)
def retract_batch(lake: Lake, batch_id: str, reason: str, now: datetime) -> dict[str, Any]:
    """Move a committed batch's rows out of the offline store into its archive, ledgered (``Lake.retract``)."""
    return lake.retract(batch_id, reason, now)


@task(name="refresh_retracted_online", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def refresh_retracted_online(
    settings: Settings, contract: Contract, lake: Lake, retraction: dict[str, Any], now: datetime
) -> dict[str, int]:
    """Stop serving a retracted batch's values; returns, per online view it fed, the entities that were served.

    In each such view the batch's entities are removed (``feature_repo.online_delete``), then the view is loaded
    again over its ttl window, as an ingest loads it: an entity with other stored rows gets its latest remaining
    row back, one with none stays absent. Removing first is what makes this right on Redis, whose writes skip a
    row older than the one stored (the retracted row is often the newest), and it touches no other entity.
    """
    repo = build_repo(contract, offline_root(settings, contract))
    store = open_store(settings, contract)
    store.apply(repo.objects)
    archived: dict[str, list[str]] = {}  # offline table -> the batch's archived files
    for relative in retraction["objects"]:
        if relative.startswith("offline/"):
            archived.setdefault(relative.split("/")[1], []).append(storage.join(retraction["archive"], relative))
    key = contract.entity.join_key
    served: dict[str, int] = {}
    for view in repo.online_views:
        files = archived.get(repo.view_tables[view.name])
        if not files:
            continue
        keys = pa.concat_tables(lake.read_offline_files(files, columns=[key])).column(key).drop_null().unique()
        served[view.name] = delete_entities(store, view.name, keys.to_pylist())
        start = max(contract.start, now - view.ttl) if view.ttl else contract.start
        materialize_view(store, view.name, start - timedelta(seconds=1), now)
    return served
