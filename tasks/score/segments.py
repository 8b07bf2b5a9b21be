"""Batch scoring: which applications a window holds, how they are cut into segments, and each segment's scores.

The scores land in ``<lake>/<dataset>/scores/scored_date=YYYY-MM-DD/<flow run>[-<segment>].parquet``, one
object per segment; a segment is ``segment_rows`` applications in time order.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from closedloop.contract import Contract
from tasks.score.scoring import ScoringModel, decisions
from tasks.shared.features import EVENT_TIMESTAMP


def check_window(start: datetime, end: datetime) -> None:
    if start >= end:
        raise ValueError(f"empty window: start {start} is not before end {end}")


def check_single_threshold(model: ScoringModel) -> None:
    """Batch scoring decides with one threshold: a version with group thresholds is refused, with why."""
    if model.policy is not None:
        raise RuntimeError(
            f"v{model.version} decides with group thresholds on {model.policy_attribute}, which batch scoring does "
            "not apply yet: score these applications through the service"
        )


def window_entities(applications: pd.DataFrame, contract: Contract, start: datetime, end: datetime) -> pd.DataFrame:
    """The applications in [start, end) as a Feast entity frame (keys, time, request fields), in time order."""
    if applications.empty:  # nothing in the lake yet
        return applications
    spec = contract.tables[contract.prediction]
    times = applications[spec.event_time]
    window = applications[(times >= pd.Timestamp(start)) & (times < pd.Timestamp(end))]
    keys = [k for k in spec.primary_key if k != spec.event_time]
    request = [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    return (
        window[list(dict.fromkeys([contract.entity.join_key, *keys, spec.event_time, *request]))]
        .rename(columns={spec.event_time: EVENT_TIMESTAMP})
        .sort_values([EVENT_TIMESTAMP, *keys])
        .reset_index(drop=True)
    )


def segment_names(run: str, rows: int, segment_rows: int) -> list[str]:
    """One object name per segment: the run's id alone for a single segment, numbered otherwise."""
    segments = -(-rows // segment_rows)
    return [run] if segments == 1 else [f"{run}-{i:04d}" for i in range(segments)]


def typed_entities(entities: pd.DataFrame) -> pd.DataFrame:
    """Text columns as strings, even in a segment where they hold no value (Feast needs the type)."""
    text = [c for c in entities.columns if entities[c].dtype == object]
    return entities.astype(dict.fromkeys(text, "string"))


def scores_table(
    frame: pd.DataFrame, contract: Contract, model: ScoringModel, scores: np.ndarray, scored_at: datetime
) -> pd.DataFrame:
    """The segment's scores: application keys, application time, probability, decision, version, scoring time."""
    spec = contract.tables[contract.prediction]
    keys = [k for k in spec.primary_key if k != spec.event_time]
    out: dict[str, object] = {k: frame[k].to_numpy() for k in dict.fromkeys([contract.entity.join_key, *keys])}
    out.update(
        {
            "applied_at": frame[EVENT_TIMESTAMP].astype("datetime64[us, UTC]").to_numpy(),
            "probability": scores,
            "decision": decisions(model, scores),
            "model_version": model.version,
            "scored_at": pd.Timestamp(scored_at).as_unit("us"),
        }
    )
    table = pd.DataFrame(out)
    table["applied_at"] = pd.to_datetime(table["applied_at"], utc=True).astype("datetime64[us, UTC]")
    return table
