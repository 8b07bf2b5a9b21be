"""The batch scoring task: one segment of applications, scored by the champion, written to the lake."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from closedloop import storage
from closedloop.contract import Contract
from closedloop.lake import parquet_bytes
from closedloop.settings import Settings
from feature_repo.definitions import model_service_name
from feature_repo.store import historical_job, open_store, service_refs
from tasks.score import scoring, segments, staging
from tasks.score.loading import load_version


class SegmentScores(BaseModel):
    """What one segment wrote: its rows, how many were refused, where."""

    rows: int
    refused: int
    uri: str


@task(name="score_segment", cache_policy=NO_CACHE)
def score_segment(
    settings: Settings, contract: Contract, version: str, entities_uri: str, segment: int, uri: str
) -> SegmentScores:
    """Point-in-time features of one segment through the FeatureService, the champion's scores, one object.

    The segment is row group ``segment`` of the staged entity frame (``entities_uri``). A contract without stored
    views (one flat table) scores from the rows' own inputs and the ratios computed as training computed them.
    """
    entities = segments.typed_entities(staging.read_segment(entities_uri, segment, settings.s3_endpoint_url))
    model = load_version(settings.mlflow_tracking_uri, contract.name, version, threads=0)
    store = open_store(settings, contract)
    refs = service_refs(store.get_feature_service(model_service_name(contract)))
    frame = historical_job(store, contract, entities, refs).to_df()
    scores = model.predict_batch(scoring.frame_matrix(frame, contract, model.columns))
    table = segments.scores_table(frame, contract, model, scores, datetime.now(UTC))
    storage.write_bytes(uri, parquet_bytes(table), settings.s3_endpoint_url)
    return SegmentScores(rows=len(table), refused=int((table["decision"] == "refuse").sum()), uri=uri)
