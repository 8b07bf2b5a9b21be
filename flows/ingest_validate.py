"""The ingest/validate flow: landing zone -> Great Expectations -> offline store or quarantine -> online store."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from pydantic import BaseModel, Field

from closedloop import events
from closedloop.contract import contract_at
from closedloop.lake import BATCH_ID_PATTERN, Lake
from closedloop.landing import sweep_work_dirs
from closedloop.locks import lake_lock
from closedloop.settings import Settings, load_settings
from tasks.ingest.tasks import (
    BatchOutcome,
    earliest_new_events,
    earliest_published,
    find_batches,
    ingest_batch,
    materialize_features,
    replay_quarantined,
    utc_now,
)


class IngestParams(BaseModel):
    """What to ingest; Prefect renders this as the run form in the UI."""

    sources: list[str] = Field(default_factory=list, description="files, folders or URIs; empty: the landing zone")
    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    replay: list[Annotated[str, Field(pattern=BATCH_ID_PATTERN)]] = Field(
        default_factory=list, description="quarantined batch ids to re-validate instead"
    )
    materialize: bool = Field(default=True, description="load new rows into the online store")


class IngestResult(BaseModel):
    """Counts reconcile: rows_in == rows_accepted + rows_quarantined + rows_duplicate.

    A batch seen before (the same bytes) counts no row; rows of a new file already stored with the same values
    count as ``rows_duplicate`` and are not stored again.
    """

    dataset: str
    contract_fingerprint: str
    started_at: datetime
    batches: list[BatchOutcome]
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    rows_duplicate: int = 0
    materialized_views: list[str]
    event_id: str | None = None


@flow(name="ingest_validate", log_prints=False)
def ingest_validate(params: IngestParams | None = None) -> IngestResult:
    """Discover, validate and store new batches of a dataset, then refresh its online features."""
    params = params or IngestParams()
    logger = get_run_logger()
    settings = load_settings()
    contract = contract_at(str(params.contract or settings.contract))
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    # one writer per lake: a concurrent run of the same files waits, then finds them ledgered
    with lake_lock(lake.root, settings.postgres_url, settings.lake_lock_wait_s):
        swept = lake.sweep()  # what a crashed run left: committed batches published, uncommitted ones removed
        if swept["published"] or swept["removed"]:
            logger.warning("crashed run(s) finished: published %s, removed %s", swept["published"], swept["removed"])
        leftovers = sweep_work_dirs()  # and the private copies of the files they were reading
        if leftovers:
            logger.warning("temporary folders of killed ingests removed: %s", ", ".join(leftovers))
        now = utc_now()
        if params.replay:
            outcomes = [
                replay_quarantined(qid, contract, lake, now, settings.ingest_chunk_rows) for qid in params.replay
            ]
        else:
            refs = find_batches(params.sources, lake.landing, contract, settings.s3_endpoint_url)
            logger.info("%d batch file(s) found for %s", len(refs), contract.name)
            outcomes = [ingest_batch(ref, contract, lake, now, settings.ingest_chunk_rows) for ref in refs]
        since = earliest_new_events(outcomes, contract)
        for table, first in earliest_published(lake, contract, swept["published"]).items():
            since[table] = min(since.get(table, first), first)
        views = materialize_features(settings, contract, since, now) if params.materialize and since else []
    result = IngestResult(
        dataset=contract.name,
        contract_fingerprint=contract.fingerprint,
        started_at=now,
        batches=outcomes,
        rows_in=sum(o.rows_in for o in outcomes),
        rows_accepted=sum(o.rows_accepted for o in outcomes),
        rows_quarantined=sum(o.rows_quarantined for o in outcomes),
        rows_duplicate=sum(o.rows_duplicate for o in outcomes),
        materialized_views=views,
    )
    _report(result, settings, lake)
    event = emit_event(
        event=events.INGESTED,
        resource=events.dataset_resource(contract.name),
        payload={
            "batches": len(outcomes),
            "rows_in": result.rows_in,
            "rows_accepted": result.rows_accepted,
            "rows_quarantined": result.rows_quarantined,
            "rows_duplicate": result.rows_duplicate,
            "contract_fingerprint": contract.fingerprint,
            "tables": sorted(since),
        },
    )
    result.event_id = str(event.id) if event else None
    return result


def _report(result: IngestResult, settings: Settings, lake: Lake) -> None:
    failing: dict[str, int] = {}
    for o in result.batches:
        for name, count in o.failing.items():
            failing[name] = failing.get(name, 0) + count
    lines = [
        f"# Ingest of `{result.dataset}` ({result.started_at:%Y-%m-%d %H:%M} UTC)",
        "",
        f"**{result.rows_in:,} rows in = {result.rows_accepted:,} accepted + "
        f"{result.rows_quarantined:,} quarantined + {result.rows_duplicate:,} duplicate**, "
        f"{len(result.batches)} batches, "
        f"contract `{result.contract_fingerprint}`.",
        "",
        "| batch | table | status | rows in | accepted | quarantined | duplicate | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in result.batches:
        reason = (o.reason or "").replace("|", "/")[:120]
        where = f" ([quarantine]({o.quarantine_uri}))" if o.quarantine_uri else ""
        lines.append(
            f"| `{o.batch_id}` {o.uri.rsplit('/', 1)[-1]} | {o.table} | {o.status}{where} | {o.rows_in:,} | "
            f"{o.rows_accepted:,} | {o.rows_quarantined:,} | {o.rows_duplicate:,} | {reason} |"
        )
    if failing:
        lines += ["", "## Top failing expectations", "", "| expectation | rows |", "|---|---|"]
        lines += [f"| `{k}` | {v:,} |" for k, v in sorted(failing.items(), key=lambda kv: -kv[1])[:10]]
    lines += ["", f"Materialized: {', '.join(result.materialized_views) or 'nothing'}. Lake: {lake.root}"]
    create_markdown_artifact(
        key=f"ingest-{result.dataset.replace('_', '-')}",
        markdown="\n".join(lines),
        description=f"ingest/validate summary for {result.dataset}",
    )
