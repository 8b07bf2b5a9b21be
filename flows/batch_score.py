"""The batch_score flow: score a partition of applications with the champion, write the scores to the lake.

Features come through the model's FeatureService with ``get_historical_features`` (point-in-time at each
application's own time, the training code path); decisions use the version's threshold. The scores land in
``<lake>/<dataset>/scores/scored_date=YYYY-MM-DD/<flow run>[-<segment>].parquet``, one atomic object per
segment. The window's applications are cut, in time order, into segments of ``segment_rows``; each segment is a
mapped task (retrieval, predict, write), run side by side on a Dask cluster's workers with ``engine: dask``.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, runtime, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from closedloop import storage
from closedloop.contract import contract_at
from closedloop.lake import Lake, parquet_bytes
from closedloop.registry import champion_version
from closedloop.settings import load_settings
from feature_repo.definitions import model_service_name
from feature_repo.store import open_store
from tasks.ingest.tasks import utc_now
from tasks.score import scoring
from tasks.shared.distributed import dask_runner
from tasks.shared.features import EVENT_TIMESTAMP


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


@task(name="score_segment", cache_policy=NO_CACHE)
def score_segment(contract_path: str, version: str, entities_uri: str, segment: int, uri: str) -> dict[str, Any]:
    """Point-in-time features of one segment through the FeatureService, the champion's scores, one object.

    The segment is row group ``segment`` of the staged entity frame (``entities_uri``).
    """
    settings = load_settings()
    contract = contract_at(contract_path)
    staged = pq.ParquetFile(io.BytesIO(storage.read_bytes(entities_uri, settings.s3_endpoint_url)))
    entities = staged.read_row_group(segment).to_pandas()
    text = [c for c in entities.columns if entities[c].dtype == object]  # typed even when a segment has no value
    entities = entities.astype(dict.fromkeys(text, "string"))
    model = scoring.load_version(settings.mlflow_tracking_uri, contract.name, version, threads=0)
    spec = contract.tables[contract.prediction]
    keys = [k for k in spec.primary_key if k != spec.event_time]
    store = open_store(settings, contract)
    frame = store.get_historical_features(
        entity_df=entities, features=store.get_feature_service(model_service_name(contract))
    ).to_df()
    scores = model.predict_batch(scoring.frame_matrix(frame, contract, model.columns))
    out: dict[str, Any] = {k: frame[k].to_numpy() for k in dict.fromkeys([contract.entity.join_key, *keys])}
    out.update(
        {
            "applied_at": frame[EVENT_TIMESTAMP].astype("datetime64[us, UTC]").to_numpy(),
            "probability": scores,
            "decision": scoring.decisions(model, scores),
            "model_version": version,
            "scored_at": pd.Timestamp(utc_now()).as_unit("us"),
        }
    )
    table = pd.DataFrame(out)
    table["applied_at"] = pd.to_datetime(table["applied_at"], utc=True).astype("datetime64[us, UTC]")
    storage.write_bytes(uri, parquet_bytes(table), settings.s3_endpoint_url)
    return {"rows": len(table), "refused": int((table["decision"] == "refuse").sum()), "uri": uri}


@flow(name="score_segments")
def score_segments(contract_path: str, version: str, entities_uri: str, uris: list[str]) -> list[dict[str, Any]]:
    """Every segment as a mapped task; all or nothing: when one fails, the segments written are removed.

    The entity frame is staged as parquet, one row group per segment: a subflow's parameters are recorded by
    Prefect, so no frame is one. The batch_score flow gives this subflow a Dask task runner for ``engine: dask``.
    """
    futures = score_segment.map(
        unmapped(contract_path), unmapped(version), unmapped(entities_uri), list(range(len(uris))), uris
    )
    futures.wait()
    failed = [f for f in futures if f.state.is_failed() or f.state.is_crashed()]
    if failed:
        endpoint = load_settings().s3_endpoint_url
        for uri in uris:
            try:
                storage.delete(uri, endpoint)
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
    if params.start >= params.end:
        raise ValueError(f"empty window: start {params.start} is not before end {params.end}")
    version = champion_version(settings.mlflow_tracking_uri, contract.name)
    if version is None:
        raise RuntimeError(f"{contract.name} has no champion to score with: deploy a model first")
    model = scoring.load_version(settings.mlflow_tracking_uri, contract.name, version, threads=0)
    if model.policy is not None:
        raise RuntimeError(
            f"v{version} decides with group thresholds on {model.policy_attribute}, which batch scoring does not "
            "apply yet: score these applications through the service"
        )
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    spec = contract.tables[contract.prediction]
    apps = lake.read_offline(contract.prediction)
    if apps.empty:
        return BatchScoreResult(dataset=contract.name, model_version=version, rows=0, refused=0, uri=None)
    times = apps[spec.event_time]
    window = apps[(times >= pd.Timestamp(params.start)) & (times < pd.Timestamp(params.end))]
    if window.empty:
        logger.info("no %s in [%s, %s)", contract.prediction, params.start, params.end)
        return BatchScoreResult(dataset=contract.name, model_version=version, rows=0, refused=0, uri=None)
    keys = [k for k in spec.primary_key if k != spec.event_time]
    request = [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    entities = (
        window[list(dict.fromkeys([contract.entity.join_key, *keys, spec.event_time, *request]))]
        .rename(columns={spec.event_time: EVENT_TIMESTAMP})
        .sort_values([EVENT_TIMESTAMP, *keys])
        .reset_index(drop=True)
    )
    run = str(runtime.flow_run.id or uuid.uuid4().hex)
    segments = -(-len(entities) // params.segment_rows)
    staged = storage.join(lake.root, "scores", "staging", f"{run}.parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(entities, preserve_index=False), buffer, row_group_size=params.segment_rows)
    storage.write_bytes(staged, buffer.getvalue(), settings.s3_endpoint_url)
    folder = storage.join(lake.root, "scores", f"scored_date={utc_now():%Y-%m-%d}")
    names = [run] if segments == 1 else [f"{run}-{i:04d}" for i in range(segments)]
    uris = [storage.join(folder, f"{name}.parquet") for name in names]
    # one segment at a time in this process (the offline store's connection is shared); side by side on Dask
    runner: Any = ThreadPoolTaskRunner(max_workers=1)
    if params.engine == "dask":
        runner = dask_runner(settings.dask_address, settings.dask_workers)
    try:
        parts = score_segments.with_options(task_runner=runner)(contract_path, version, staged, uris)
    finally:
        storage.delete(staged, settings.s3_endpoint_url)
    rows, refused = sum(p["rows"] for p in parts), sum(p["refused"] for p in parts)
    logger.info(
        "scored %d applications with v%s in %d segment(s) (%d refused): %s", rows, version, len(parts), refused, folder
    )
    return BatchScoreResult(
        dataset=contract.name, model_version=version, rows=rows, refused=refused, uri=uris[0], uris=uris
    )
