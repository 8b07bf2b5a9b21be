"""Model fitting: the training configuration, time splits, XGBoost and the small random search over it."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from closedloop.contract import Contract
from tasks.shared.features import EVENT_TIMESTAMP, SPLIT

logger = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The data cannot support a trustworthy model; the message says what is missing."""


class TrainingConfig(BaseModel):
    """Knobs of one training run: the train/evaluate flow's form shows them, the tasks and MLflow's params read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    test_share: float = Field(default=0.2, gt=0, lt=1, description="latest share of the rows: the test window")
    validation_share: float = Field(default=0.15, gt=0, lt=1, description="share before it: early stopping")
    min_rows: int = Field(default=500, ge=1, description="fewer matured labelled rows: no training set")
    min_positives: int = Field(default=30, ge=1, description="fewer positive labels: no training set")
    seed: int = 7
    n_estimators: int = Field(default=600, ge=10, le=5000)
    max_depth: int = Field(default=4, ge=1, le=12)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    early_stopping_rounds: int = Field(default=40, ge=1)
    n_jobs: int = Field(default=2, ge=1, description="XGBoost threads of a local fit")
    min_child_weight: float = 1.0
    subsample: float = Field(default=1.0, gt=0, le=1)
    colsample_bytree: float = Field(default=1.0, gt=0, le=1)
    window_days: int | None = Field(
        default=None, ge=30, description="train on applications of the last N days with matured labels; empty: all"
    )
    engine: Literal["local", "dask"] = Field(
        default="local",
        description="local: XGBoost in the flow's process; dask: xgboost.dask on CLOSEDLOOP_DASK_ADDRESS "
        "(or a LocalCluster) for a training set one worker cannot hold",
    )


TUNED = ("max_depth", "learning_rate", "min_child_weight", "subsample", "colsample_bytree")


class Trial(BaseModel):
    """One configuration of the random search, judged on the validation split."""

    params: dict[str, int | float]
    validation_auc: float
    best_iteration: int


class Tuning(BaseModel):
    """The search's trials and the parameters the final fit used (the best trial's)."""

    trials: list[Trial]
    chosen: dict[str, int | float]


def search_space(base: TrainingConfig, trials: int, seed: int) -> list[TrainingConfig]:
    """``trials`` configurations for a small random search; the first is ``base`` itself, so tuning never loses it."""
    rng = np.random.default_rng(seed)
    configs = [base.model_copy(update={"n_jobs": 1})]
    for _ in range(trials - 1):
        configs.append(
            base.model_copy(
                update={
                    "max_depth": int(rng.integers(3, 8)),
                    "learning_rate": float(10 ** rng.uniform(-1.7, -0.8)),
                    "min_child_weight": float(10 ** rng.uniform(0, 1.3)),
                    "subsample": float(rng.uniform(0.6, 1.0)),
                    "colsample_bytree": float(rng.uniform(0.5, 1.0)),
                    "n_jobs": 1,  # trials run side by side
                }
            )
        )
    return configs


def trial_of(config: TrainingConfig, model: Any) -> Trial:
    """A fitted trial's record: its searched parameters, validation AUC and best iteration."""
    return Trial(
        params={name: getattr(config, name) for name in TUNED},
        validation_auc=float(model.best_score),
        best_iteration=int(model.best_iteration),
    )


def choose(base: TrainingConfig, trials: list[Trial]) -> tuple[TrainingConfig, Tuning]:
    """The configuration of the final fit: ``base`` with the parameters of the trial of best validation AUC."""
    best = max(trials, key=lambda trial: trial.validation_auc)
    config = base.model_copy(update=best.params)
    return config, Tuning(trials=trials, chosen={name: getattr(config, name) for name in TUNED})


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
