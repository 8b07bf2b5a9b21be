"""Training-serving skew: the features a window's requests were served with, read again as training reads them.

The scoring service reads the online store through its own fast path (``feature_repo.online_read``) and the online
store is filled by closedloop's own writer (``feature_repo.online_write``); training reads point-in-time features
from the offline store through the model's FeatureService. Both are tested equal to Feast on fixed data; this check
keeps them honest on live traffic. A seeded sample of the window's answered requests (entity key, time scored,
the request's own inputs) is retrieved point-in-time through the FeatureService, and every feature the inference
log kept is compared with what the offline store says it was at that moment, as the model sees it
(:func:`tasks.score.scoring.frame_matrix` turns both sides into the model matrix: categories as the contract's
codes, unknown categories and infinities as missing).

Categories must be equal; numbers may differ by ``monitoring.skew_tolerance`` relative to the larger of the two;
a value on one side and none on the other is a mismatch. The request's own inputs are the log's values on both
sides (training reads them from the entity frame), so they are not compared; the ratios computed from them and
the stored features are. A feature whose mismatch share exceeds ``monitoring.max_skew_share`` is the violation
``training_serving_skew``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from closedloop.contract import ColumnType, Contract
from tasks.score.scoring import frame_matrix
from tasks.shared.features import EVENT_TIMESTAMP, feature_names

VIOLATION = "training_serving_skew"
EXAMPLES = 5  # entity keys kept per skewed feature: enough to look the rows up, small enough for the record
ROW = "_skew_row"  # the entity frame's row number: the retrieval's rows are put back in the sample's order


class FeatureSkew(BaseModel):
    """One feature's comparison over the sampled requests."""

    feature: str
    kind: Literal["category", "number"]
    mismatched: int = Field(description="sampled requests whose served value differs from the offline store's")
    missing_served: int = Field(description="of which served missing where the offline store has a value")
    missing_offline: int = Field(description="of which served a value where the offline store has none then")
    share: float = Field(description="mismatched / sampled requests")
    examples: list[int | str] = Field(description="entity keys of the first mismatched requests")


class SkewVerdict(BaseModel):
    """The window's training-serving skew: per feature, how often the served value is not the training value."""

    status: Literal["judged", "no_data"]
    feature_service: str
    window_rows: int
    sampled: int
    seed: int
    tolerance: float
    max_share: float
    features: list[FeatureSkew] = []
    request_features: list[str] = Field(
        default=[], description="the request's own inputs: handed to the retrieval as logged, so not compared"
    )
    not_logged: list[str] = Field(default=[], description="model inputs the inference log kept no column of")
    skewed: list[str] = Field(default=[], description="features whose mismatch share exceeds max_share")
    violations: list[str] = []
    message: str | None = None
    mlflow_run: str | None = Field(default=None, description="the run of the monitoring experiment it is logged in")
    event_id: str | None = Field(default=None, description="the closedloop.skew.detected event it raised")

    def as_record(self) -> dict[str, Any]:
        """The ``skew`` entry of the window's JSON record."""
        return self.model_dump(mode="json")


def sample_requests(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """Up to ``size`` of the window's answered requests, drawn with ``seed``, in the window's order."""
    if len(frame) <= size:
        return frame.reset_index(drop=True)
    picked = np.sort(np.random.default_rng(seed).choice(len(frame), size=size, replace=False))
    return frame.iloc[picked].reset_index(drop=True)


def request_inputs(contract: Contract) -> list[str]:
    """The model inputs that arrive with each request (the prediction table's), not from a stored view."""
    return [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]


def entity_rows(contract: Contract, sample: pd.DataFrame) -> pd.DataFrame:
    """The retrieval's entity frame: each request's entity key, time scored and own inputs, typed as training's.

    The inputs are the values the log kept (numbers as floats, categories by name) cast back to the contract's
    types: what the application carried, which is what the on-demand ratios are computed from offline too.
    """
    key = contract.entity.join_key
    keys = sample["entity_id"]
    out = {
        key: keys.astype("int64") if contract.key_type == "int" else keys.astype(str).astype("string"),
        EVENT_TIMESTAMP: pd.to_datetime(sample["scored_at"], utc=True),
    }
    kinds = {ColumnType.INT: "Int64", ColumnType.FLOAT: "float64", ColumnType.BOOL: "boolean"}
    for name in request_inputs(contract):
        values = sample[name] if name in sample.columns else pd.Series(None, index=sample.index, dtype=object)
        kind = contract.column(name).type
        if kind is ColumnType.CATEGORY:
            out[name] = values.astype("string")
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            out[name] = numbers.round().astype(kinds[kind]) if kind is ColumnType.INT else numbers.astype(kinds[kind])
    frame = pd.DataFrame(out)
    frame[ROW] = np.arange(len(frame), dtype="int64")
    return frame


def offline_features(store: Any, contract: Contract, entities: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of ``entities`` through the model's FeatureService, in the entity frame's order."""
    from feature_repo.definitions import model_service_name
    from feature_repo.store import historical_job, service_refs

    refs = service_refs(store.get_feature_service(model_service_name(contract)))
    retrieved = historical_job(store, contract, entities, refs).to_df()
    retrieved = retrieved.drop_duplicates(ROW).sort_values(ROW, kind="stable").reset_index(drop=True)
    if len(retrieved) != len(entities):
        raise ValueError(
            f"the point-in-time retrieval through {model_service_name(contract)!r} returned {len(retrieved)} rows for "
            f"{len(entities)} sampled requests of {contract.name}: the skew check cannot pair them; re-run the monitor "
            "window after checking the offline store's tables"
        )
    return retrieved


def compare(
    contract: Contract,
    served: pd.DataFrame,
    offline: pd.DataFrame,
    features: list[str],
    tolerance: float,
) -> list[FeatureSkew]:
    """Each feature's mismatches between the served rows and the offline rows of the same requests (same order).

    Whole columns at once: both sides become the model matrix, then one comparison with a relative tolerance per
    column (zero for categories, whose codes must be equal).
    """
    if not features:
        return []
    left = frame_matrix(served, contract, features)
    right = frame_matrix(offline, contract, features)
    categories = np.array([_is_category(contract, name) for name in features])
    allowed = np.where(categories, 0.0, tolerance)
    left_missing, right_missing = np.isnan(left), np.isnan(right)
    with np.errstate(invalid="ignore"):
        close = np.abs(left - right) <= allowed * np.maximum(np.abs(left), np.abs(right))
    equal = (left_missing & right_missing) | (~left_missing & ~right_missing & close)
    mismatch = ~equal
    counts = mismatch.sum(axis=0)
    missing_served = (left_missing & ~right_missing).sum(axis=0)
    missing_offline = (~left_missing & right_missing).sum(axis=0)
    keys = served["entity_id"].to_numpy()
    rows = max(len(served), 1)
    out = []
    for j, name in enumerate(features):
        examples = [_plain(k) for k in keys[np.flatnonzero(mismatch[:, j])[:EXAMPLES]]] if counts[j] else []
        out.append(
            FeatureSkew(
                feature=name,
                kind="category" if categories[j] else "number",
                mismatched=int(counts[j]),
                missing_served=int(missing_served[j]),
                missing_offline=int(missing_offline[j]),
                share=float(counts[j]) / rows,
                examples=examples,
            )
        )
    return out


def check(store: Any, contract: Contract, frame: pd.DataFrame, seed: int = 0) -> SkewVerdict:
    """The skew verdict of a window's answered requests (``frame``: as :func:`tasks.monitor.window.served` gives)."""
    from feature_repo.definitions import model_service_name

    rules = contract.monitoring
    requested = set(request_inputs(contract))
    names = feature_names(contract)
    empty = SkewVerdict(
        status="no_data",
        feature_service=model_service_name(contract),
        window_rows=len(frame),
        sampled=0,
        seed=seed,
        tolerance=rules.skew_tolerance,
        max_share=rules.max_skew_share,
        request_features=[n for n in names if n in requested],
        not_logged=[n for n in names if n not in frame.columns],
    )
    if frame.empty:
        return empty
    sample = sample_requests(frame, rules.skew_sample, seed)
    offline = offline_features(store, contract, entity_rows(contract, sample))
    compared = [n for n in names if n not in requested and n in frame.columns]
    features = compare(contract, sample, offline, compared, rules.skew_tolerance)
    skewed = [f for f in features if f.share > rules.max_skew_share]
    message = None
    if skewed:
        listed = ", ".join(f"{f.feature} {f.share:.1%} ({f.mismatched} of {len(sample)})" for f in skewed)
        message = (
            f"{VIOLATION}: {listed} of the sampled requests were served other values than the offline store's at "
            f"their time (limit {rules.max_skew_share:.1%}): compare the online store with the offline tables"
        )
    judged = {
        "status": "judged",
        "sampled": len(sample),
        "features": features,
        "skewed": [f.feature for f in skewed],
        "violations": [VIOLATION] if skewed else [],
        "message": message,
    }
    return empty.model_copy(update=judged)


def event_payload(verdict: SkewVerdict, window: dict[str, str], champion: str) -> dict[str, Any]:
    """The skew event's payload: small (shares and a few keys of the skewed features), for a person to act on."""
    skewed = {f.feature: f for f in verdict.features if f.feature in verdict.skewed}
    return {
        "window_start": window["start"],
        "window_end": window["end"],
        "champion": champion,
        "feature_service": verdict.feature_service,
        "sampled": verdict.sampled,
        "max_share": verdict.max_share,
        "features": {name: round(f.share, 4) for name, f in skewed.items()},
        "examples": {name: f.examples for name, f in skewed.items()},
    }


def markdown(verdict: SkewVerdict) -> str:
    """The skew section of the window's Prefect artifact: the features that differ, or that none does."""
    if verdict.status != "judged":
        return f"Training-serving skew: {verdict.status}"
    head = (
        f"Training-serving skew: {verdict.sampled} of {verdict.window_rows} requests re-read through "
        f"{verdict.feature_service}; {', '.join(verdict.skewed) or 'no feature'} over {verdict.max_share:.1%}"
    )
    differing = [f for f in verdict.features if f.mismatched]
    if not differing:
        return head
    lines = [head, "", "| feature | differ | served missing | offline missing | share | entities |", "|---" * 6 + "|"]
    for f in sorted(differing, key=lambda f: -f.share):
        keys = ", ".join(str(k) for k in f.examples)
        lines.append(
            f"| {f.feature} | {f.mismatched} | {f.missing_served} | {f.missing_offline} | {f.share:.2%} | {keys} |"
        )
    return "\n".join(lines)


def _is_category(contract: Contract, name: str) -> bool:
    derived = {a.name for a in contract.aggregates} | {r.name for r in contract.ratios}
    return name not in derived and contract.column(name).type is ColumnType.CATEGORY


def _plain(value: Any) -> int | str:
    """An entity key as JSON keeps it."""
    value = value.item() if isinstance(value, np.generic) else value
    return value if isinstance(value, int) else str(value)
