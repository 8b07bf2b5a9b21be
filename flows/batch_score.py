"""The batch_score flow: score a partition of applications with the champion, write the scores to the lake.

Features come through the model's FeatureService with ``get_historical_features`` (point-in-time at each
application's own time, the training code path); decisions use the version's threshold. The scores land in
``<lake>/<dataset>/scores/scored_date=YYYY-MM-DD/<flow run>[-<segment>].parquet``, one atomic object per
segment. The window's applications are cut, in time order, into segments of ``segment_rows``; each segment is a
mapped task (retrieval, predict, write), run side by side on a Dask cluster's workers with ``engine: dask``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, runtime, unmapped
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from closedloop import seal, storage
from closedloop.contract import contract_at
from closedloop.lake import Lake
from closedloop.settings import load_settings
from tasks.score import segments, staging
from tasks.score.loading import load_version
from tasks.score.tasks import SegmentScores, score_segment
from tasks.shared.dask_cluster import dask_runner


class BatchScoreParams(BaseModel):
    """Which applications to score; Prefect renders this as the run form in the UI."""

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    start: datetime = Field(description="first application time (UTC, inclusive)")
    end: datetime = Field(description="last application time (UTC, exclusive)")
    segment_rows: int = Field(default=500_000, ge=1, description="applications per segment (one task and object each)")
    engine: Literal["local", "dask"] = Field(
        default="local",
        description="local: segments in the flow's process; dask: segments on CLOSEDLOOP_DASK_ADDRESS's workers "
        "(or a LocalCluster's), side by side",
    )


class BatchScoreResult(BaseModel):
    dataset: str
    model_version: str
    rows: int
    refused: int
    uri: str | None  # the first segment's object (the only one for a window within one segment)
    uris: list[str] = []


@flow(name="score_segments")
def score_segments(contract_path: str, version: str, entities_uri: str, uris: list[str]) -> list[SegmentScores]:
    """Every segment as a mapped task; all or nothing: when one fails, the segments written are removed.

    The entity frame is staged as parquet, one row group per segment: a subflow's parameters are recorded by
    Prefect, so no frame is one. The batch_score flow gives this subflow a Dask task runner for ``engine: dask``.
    """
    settings = load_settings()
    contract = contract_at(contract_path)
    futures = score_segment.map(
        unmapped(settings), unmapped(contract), unmapped(version), unmapped(entities_uri), list(range(len(uris))), uris
    )
    futures.wait()
    failed = [f for f in futures if f.state.is_failed() or f.state.is_crashed()]
    if failed:
        for uri in uris:
            try:
                storage.delete(uri, settings.s3_endpoint_url)
            except (storage.StorageError, OSError) as exc:  # the one that failed may not even be deletable
                get_run_logger().warning("could not remove segment %s: %s", uri, exc)
        failed[0].result()  # raises the first segment's error
    return [f.result() for f in futures]


@flow(name="batch_score")
def batch_score(params: BatchScoreParams) -> BatchScoreResult:
    """Score every application of the window with the champion; the scores go to the lake."""
    logger = get_run_logger()
    settings = load_settings()
    contract_path = str(params.contract or settings.contract)
    contract = contract_at(contract_path)
    segments.check_window(params.start, params.end)
    version = seal.champion_of(settings, contract.name)  # the sealed promotion, whatever the alias says
    if version is None:
        raise RuntimeError(f"{contract.name} has no champion to score with: deploy a model first")
    segments.check_single_threshold(load_version(settings.mlflow_tracking_uri, contract.name, version, threads=0))
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    entities = segments.window_entities(lake.read_offline(contract.prediction), contract, params.start, params.end)
    if entities.empty:
        logger.info("no %s in [%s, %s)", contract.prediction, params.start, params.end)
        return BatchScoreResult(dataset=contract.name, model_version=version, rows=0, refused=0, uri=None)
    run = str(runtime.flow_run.id or uuid.uuid4().hex)
    staged = staging.stage_entities(
        storage.join(lake.root, "scores", "staging", f"{run}.parquet"),
        entities,
        params.segment_rows,
        settings.s3_endpoint_url,
    )
    folder = storage.join(lake.root, "scores", f"scored_date={datetime.now(UTC):%Y-%m-%d}")
    uris = [
        storage.join(folder, f"{name}.parquet")
        for name in segments.segment_names(run, len(entities), params.segment_rows)
    ]
    # one segment at a time in this process (the offline store's connection is shared); side by side on Dask
    runner: Any = ThreadPoolTaskRunner(max_workers=1)
    if params.engine == "dask":
        runner = dask_runner(settings.dask_address, settings.dask_workers)
    try:
        parts = score_segments.with_options(task_runner=runner)(contract_path, version, staged, uris)
    finally:
        storage.delete(staged, settings.s3_endpoint_url)
    rows, refused = sum(p.rows for p in parts), sum(p.refused for p in parts)
    logger.info(
        "scored %d applications with v%s in %d segment(s) (%d refused): %s", rows, version, len(parts), refused, folder
    )
    return BatchScoreResult(
        dataset=contract.name, model_version=version, rows=rows, refused=refused, uri=uris[0], uris=uris
    )
