"""Training data and model fitting: a point-in-time training set through the FeatureService, time splits, XGBoost.

Only labels that have matured by the cut-off are used: an application enters the training set when its outcome
was observed before the cut-off and the contract's label delay has passed since it was made.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from closedloop.contract import Contract
from closedloop.lake import Lake
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT

logger = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The data cannot support a trustworthy model; the message says what is missing."""


@dataclass(frozen=True)
class TrainingConfig:
    """Knobs of one training run (the flow's parameters carry them)."""

    test_share: float = 0.2
    validation_share: float = 0.15
    min_rows: int = 500
    min_positives: int = 30
    seed: int = 7
    n_estimators: int = 600
    max_depth: int = 4
    learning_rate: float = 0.05
    early_stopping_rounds: int = 40
    n_jobs: int = 2
    min_child_weight: float = 1.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    window_days: int | None = None  # train on the most recent matured applications only
    engine: str = "local"  # "dask": xgboost.dask across a Dask cluster (tasks.shared.distributed)


TUNED = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree")


def search_space(base: TrainingConfig, trials: int, seed: int) -> list[TrainingConfig]:
    """``trials`` configurations for a small random search; the first is ``base`` itself, so tuning never loses it."""
    rng = np.random.default_rng(seed)
    configs = [replace(base, n_jobs=1)]
    for _ in range(trials - 1):
        configs.append(
            replace(
                base,
                max_depth=int(rng.integers(3, 8)),
                learning_rate=float(10 ** rng.uniform(-1.7, -0.8)),
                min_child_weight=float(10 ** rng.uniform(0, 1.3)),
                subsample=float(rng.uniform(0.6, 1.0)),
                colsample_bytree=float(rng.uniform(0.5, 1.0)),
                n_jobs=1,  # trials run side by side
            )
        )
    return configs


def entity_frame(lake: Lake, contract: Contract, cutoff: datetime, window_days: int | None = None) -> pd.DataFrame:
    """Scored applications with a matured label: the entity frame for point-in-time retrieval.

    ``window_days`` keeps only applications made in that many days before the last matured one (fresh data
    after a change in the world); None keeps the whole history. Rows are in time order, then by the entity
    key and the prediction table's own key (one row per decision). The join, filters and sort run in DuckDB
    over the Arrow tables (a million matured applications: 2.2 s with the reading, against 3.2 s in pandas).
    """
    import duckdb

    spec = contract.tables[contract.prediction]
    label = contract.label
    label_spec = contract.tables[label.source]
    request = [c.name for c in contract.columns_of(contract.prediction) if c.is_model_input]
    keys = [k for k in label_spec.primary_key if k != label_spec.event_time]
    own = [k for k in spec.primary_key if k != spec.event_time]
    columns = list(dict.fromkeys([contract.entity.join_key, *keys, spec.event_time, *request]))
    apps = lake.read_offline_arrow(contract.prediction, columns=list(dict.fromkeys([*columns, *own])))
    outcomes = lake.read_offline_arrow(
        label.source, columns=list(dict.fromkeys([*keys, label_spec.event_time, label.column]))
    )
    if apps is None or apps.num_rows == 0:
        raise TrainingDataError(f"no {contract.prediction} rows in the offline store: ingest data first")
    if outcomes is None or outcomes.num_rows == 0:
        raise TrainingDataError(f"no {label.source} rows (labels) in the offline store: ingest outcomes first")
    names = {*columns, *own, *keys, label.column, label_spec.event_time}
    quoted = {name: '"' + name.replace('"', '""') + '"' for name in names}
    key_list = ", ".join(quoted[k] for k in keys)
    con = duckdb.connect()  # private and in memory: reads only the two Arrow tables below
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("apps", apps)
        con.register("outcomes", outcomes)
        for name, table in (("apps", contract.prediction), ("outcomes", label.source)):
            repeated = con.execute(
                f"SELECT count(*) FROM (SELECT {key_list} FROM {name} GROUP BY ALL HAVING count(*) > 1)"
            ).fetchone()
            if repeated and repeated[0]:
                raise TrainingDataError(
                    f"{repeated[0]} value(s) of {keys} appear in more than one {table} row: a label must match one "
                    "application"
                )
        event_time, label_time = f"a.{quoted[spec.event_time]}", f"o.{quoted[label_spec.event_time]}"
        latest = cutoff - timedelta(days=label.delay_days)
        matured = (
            f"SELECT {', '.join('a.' + quoted[c] for c in columns)}, o.{quoted[label.column]} "
            f"FROM apps a JOIN outcomes o USING ({key_list}) WHERE {label_time} <= $cutoff AND {event_time} <= $latest"
        )
        if window_days is not None:  # counted back from the last matured application, not from now:
            # a table whose data ends long ago keeps its own recent window
            matured = (
                f"WITH m AS ({matured}) SELECT * FROM m "
                f"WHERE {quoted[spec.event_time]} > (SELECT max({quoted[spec.event_time]}) FROM m) "
                f"- to_days({int(window_days)})"
            )
        order = ", ".join(quoted[c] for c in dict.fromkeys([spec.event_time, contract.entity.join_key, *own]))
        table = con.execute(
            f"SELECT * FROM ({matured}) ORDER BY {order}", {"cutoff": cutoff, "latest": latest}
        ).to_arrow_table()
    finally:
        con.close()
    frame = table.to_pandas().rename(columns={spec.event_time: EVENT_TIMESTAMP})
    positives = int((frame[label.column] == label.positive).sum())
    if len(frame) == 0:
        window = f", window {window_days} days" if window_days is not None else ""
        raise TrainingDataError(f"no matured labels by {cutoff:%Y-%m-%d} (label delay {label.delay_days} days{window})")
    if positives == 0 or positives == len(frame):
        raise TrainingDataError(
            f"the label has a single class in the {len(frame)} matured rows ({positives} positives): nothing to learn"
        )
    return frame


def frame_hash(frame: pd.DataFrame) -> str:
    """Lineage: a hash of the entity frame's content (row order included)."""
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def assign_splits(frame: pd.DataFrame, contract: Contract, config: TrainingConfig) -> pd.Series:
    """Split rows into train / validation / test, by time (the test window is the latest) unless unordered."""
    return pd.Series(split_labels(frame, contract, config), index=frame.index, name=SPLIT)


SPLITS = np.array(["train", "validation", "test"], dtype=object)


def split_codes(frame: pd.DataFrame, contract: Contract, config: TrainingConfig) -> np.ndarray:
    """Per row, in the frame's order: 0 train, 1 validation, 2 test (:data:`SPLITS`); the test window is the latest."""
    n = len(frame)
    n_test = max(round(n * config.test_share), 1)
    n_val = max(round(n * config.validation_share), 1)
    if contract.time_ordered:
        # as UTC instants: a time zone aware column would become an array of Timestamp objects
        instants = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True).to_numpy(dtype="datetime64[ns]")
        order = np.argsort(instants, kind="stable")
    else:
        order = np.random.default_rng(config.seed).permutation(n)
    codes = np.empty(n, dtype=np.int8)
    codes[order[: n - n_test - n_val]] = 0
    codes[order[n - n_test - n_val : n - n_test]] = 1
    codes[order[n - n_test :]] = 2
    return codes


def split_labels(frame: pd.DataFrame, contract: Contract, config: TrainingConfig) -> np.ndarray:
    """:func:`assign_splits` as a plain array of "train" / "validation" / "test", in the frame's row order."""
    out: np.ndarray = SPLITS[split_codes(frame, contract, config)]
    return out


def xgboost_params(config: TrainingConfig, constraints: dict[str, int] | None = None) -> dict[str, Any]:
    """The estimator's parameters, the same for a fit in this process and one across a Dask cluster."""
    return {
        "monotone_constraints": constraints or None,
        "n_estimators": config.n_estimators,
        "max_depth": config.max_depth,
        "learning_rate": config.learning_rate,
        "min_child_weight": config.min_child_weight,
        "subsample": config.subsample,
        "colsample_bytree": config.colsample_bytree,
        "tree_method": "hist",
        "enable_categorical": True,
        "early_stopping_rounds": config.early_stopping_rounds,
        "eval_metric": "auc",
        "random_state": config.seed,
    }


def fit_model(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_val: pd.DataFrame,
    y_val: np.ndarray,
    config: TrainingConfig,
    constraints: dict[str, int] | None = None,
) -> Any:
    """XGBoost (hist) with early stopping on the validation split and the contract's monotone constraints."""
    import xgboost as xgb

    model = xgb.XGBClassifier(**xgboost_params(config, constraints), n_jobs=config.n_jobs)
    model.fit(x_train, y_train, eval_set=[(x_val, y_val)], verbose=False)
    logger.info("fitted %d trees (best iteration %d)", model.n_estimators, model.best_iteration)
    return model


class Gates(BaseModel):
    """Promotion thresholds; every gate fails closed."""

    min_roc_auc: float = Field(default=0.65, description="absolute floor on the test window")
    min_test_rows: int = Field(default=200, description="fewer test rows: the gate cannot decide")
    min_test_positives: int = Field(default=20)
    noninferiority_margin: float = Field(
        default=0.01, description="lower bound of AUC(new)-AUC(champion) above -margin"
    )
    max_demographic_parity_difference: float = 0.15
    max_equalized_odds_difference: float = 0.15
    min_disparate_impact: float = 0.8
    min_group_rows: int = 50
    min_group_outcomes: int = Field(default=30, description="defaults and repayments for a group's TPR/FPR to count")
    max_fairness_worsening: float = Field(
        default=0.02, description="vs the champion, per disparity measure, and beyond bootstrap noise"
    )
    mitigation: Literal["threshold_optimizer", "none"] = Field(
        default="threshold_optimizer",
        description="when the fairness gate fails: try group thresholds on an attribute the contract allows",
    )
    decision_seed: int = Field(default=7, description="seed of the group-threshold candidate's randomised mix")
