"""Prefect tasks of the train/evaluate flow: retrain guards, training set, fit, evaluation with gates, registration.

The evaluation and registration modules (scikit-learn, Fairlearn, SHAP, Matplotlib) are imported by the tasks
that use them: a triggered run's guards decide in seconds, before the training stack is loaded.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from closedloop import seal
from closedloop.contract import Contract
from closedloop.lake import Lake
from closedloop.registry import ChampionUnavailable, champion_scores, champion_version, read_evidence
from closedloop.settings import Settings
from tasks.shared.features import EVENT_TIMESTAMP, feature_names, monotone_constraints
from tasks.train import attempts, dataset
from tasks.train.dataset import TrainingData, TrainingSet
from tasks.train.evidence import Evaluation, FairnessRecord, LimitsRecord
from tasks.train.fit import TrainingConfig, TrainingDataError, Trial, Tuning, fit_model, trial_of
from tasks.train.gates import Gates, feature_coverage, undecidable_quality
from tasks.train.guards import (
    DEFERRED,
    TRAINED,
    Attempt,
    GuardVerdict,
    RetrainGuards,
    label_coverage,
    without_labels,
)

if TYPE_CHECKING:
    from tasks.train.evaluation import Champion

logger = logging.getLogger(__name__)


@task(name="retrain_guards", cache_policy=NO_CACHE)
def check_retrain_guards(
    settings: Settings, contract: Contract, guards: RetrainGuards, now: datetime, flow_run_id: str, started_by: str
) -> GuardVerdict:
    """Cool-down, daily budget and label coverage of the drifted period; ``deferred`` names the first that fails.

    The time guards claim the attempt in the lake under its lock (``tasks/train/attempts.py``); a claimed attempt
    the label guard then defers is recorded as deferred, and still counts for the cool-down.
    """
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    verdict = attempts.claim(lake, settings.postgres_url, guards, now, flow_run_id, started_by)
    if verdict.deferred:
        return verdict
    champion = champion_version(settings.mlflow_tracking_uri, contract.name)
    seen_until = None
    if champion is not None:
        window = read_evidence(settings.mlflow_tracking_uri, contract.name, champion)["data_window"]
        seen_until = datetime.fromisoformat(window[1])
    try:
        matured = dataset.entity_frame(lake, contract, now)[EVENT_TIMESTAMP]
    except TrainingDataError as exc:
        verdict = without_labels(verdict, str(exc))
    else:
        verdict = label_coverage(verdict, guards, matured, seen_until)
    if verdict.deferred:
        attempt = Attempt(flow_run_id=flow_run_id, started_by=started_by, started=now)
        attempts.finish(lake, attempt, DEFERRED, verdict.deferred, datetime.now(UTC))
    return verdict


@task(name="record_retrain", cache_policy=NO_CACHE)
def record_retrain(
    settings: Settings, contract: Contract, now: datetime, flow_run_id: str, started_by: str, version: str
) -> str:
    """The guarded run registered ``version``: its attempt's record says so; the cool-down runs from here."""
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    attempt = Attempt(flow_run_id=flow_run_id, started_by=started_by, started=now)
    return attempts.finish(lake, attempt, TRAINED, version, datetime.now(UTC))


@task(name="build_training_set", cache_policy=NO_CACHE)
def build_training_set(
    settings: Settings, contract: Contract, cutoff: datetime, config: TrainingConfig, batch_rows: int = 250_000
) -> TrainingSet:
    """Point-in-time features for every matured application, through the model's FeatureService, to parquet."""
    return dataset.build_training_set(settings, contract, cutoff, config, batch_rows)


def _fit(training: TrainingSet, contract: Contract, config: TrainingConfig) -> Any:
    """XGBoost on the train split, early stopping on the validation split, the contract's monotone constraints."""
    data = dataset.load_training(training, contract)
    train, validation = data.split("train"), data.split("validation")
    return fit_model(
        data.features[train],
        data.labels[train],
        data.features[validation],
        data.labels[validation],
        config,
        monotone_constraints(contract),
    )


@task(name="fit_model", cache_policy=NO_CACHE)
def train_model(
    training: TrainingSet, contract: Contract, config: TrainingConfig, settings: Settings | None = None
) -> str:
    """Fit XGBoost on the train split with early stopping on the validation split; returns the model file.

    ``engine="dask"``: the same fit across a Dask cluster (``settings.dask_address``, else a LocalCluster).
    """
    path = training.path.with_suffix(".ubj")
    if config.engine == "dask":
        from tasks.shared.dask_cluster import cluster
        from tasks.train.distributed_fit import fit_dask

        address, workers = (settings.dask_address, settings.dask_workers) if settings else (None, 2)
        with cluster(address, workers) as dask_client:
            model = fit_dask(
                dask_client,
                str(training.path),
                contract,
                feature_names(contract),
                config,
                monotone_constraints(contract),
            )
            model.save_model(path)
        return str(path)
    _fit(training, contract, config).save_model(path)
    return str(path)


@task(name="tuning_trial", cache_policy=NO_CACHE)
def tuning_trial(training: TrainingSet, contract: Contract, config: TrainingConfig) -> Trial:
    """One configuration of the search, judged by AUC on the validation split (never on the test window)."""
    return trial_of(config, _fit(training, contract, config))


def load_model(path: str) -> Any:
    """A model file written by :func:`train_model`."""
    import xgboost as xgb

    model = xgb.XGBClassifier()
    model.load_model(path)
    return model


def _test_scores_path(model_path: str) -> Path:
    """Where the evaluation keeps the model's scores on the test window, for the registration to read."""
    return Path(model_path).with_suffix(".test-scores.npy")


def _champion(tracking_uri: str, contract: Contract, data: TrainingData) -> Champion:
    """The champion's scores on the candidate's validation and test rows; None without a champion."""
    from tasks.train.evaluation import ChampionScores, UnscorableChampion

    try:
        version = champion_version(tracking_uri, contract.name)
        if version is None:
            return None
        validation, test = data.split("validation"), data.split("test")
        scored = validation | test
        both = champion_scores(tracking_uri, contract.name, version, data.features[scored])
    except ChampionUnavailable as exc:
        return UnscorableChampion(str(exc))
    return ChampionScores(version, validation=both[validation[scored]], test=both[test[scored]])


@task(name="evaluate_candidate", cache_policy=NO_CACHE)
def evaluate_candidate(
    training: TrainingSet, model_path: str, contract: Contract, tracking_uri: str, gates: Gates
) -> Evaluation:
    """Feature coverage, metrics with intervals, cost threshold, calibration, segments, champion, fairness, gates.

    The test window is scored once: the scores are kept next to the model for the registration.
    """
    from tasks.train import evaluation

    coverage = feature_coverage(training.coverage, contract.min_feature_coverage)
    data = dataset.load_training(training, contract)
    model = load_model(model_path)
    test = data.split("test")
    scores = model.predict_proba(data.features[test])[:, 1]
    scores_path = _test_scores_path(model_path)
    np.save(scores_path, scores)
    test_positives = int(data.labels[test].sum())
    blocked = undecidable_quality(int(test.sum()), test_positives, gates)
    if blocked is not None:
        undecided = evaluation.undecided(int(test.sum()), test_positives, blocked, str(scores_path))
        return evaluation.with_coverage(undecided, coverage)
    champion = _champion(tracking_uri, contract, data)
    judged = evaluation.evaluate(data, model, scores, contract, gates, champion, str(scores_path))
    return evaluation.with_coverage(judged, coverage)


@task(name="register_candidate", cache_policy=NO_CACHE)
def register_candidate(
    training: TrainingSet,
    model_path: str,
    contract: Contract,
    tracking_uri: str,
    evaluation: Evaluation,
    config: TrainingConfig,
    started_by: str,
    now: datetime,
    tuning: Tuning | None = None,
    automatic: bool = False,
    fairness: FairnessRecord | None = None,
    limits: LimitsRecord | None = None,
    keys: seal.KeyFiles | None = None,
    flow_run_id: str | None = None,
    prefect_ui_url: str | None = None,
    trigger_event_id: str | None = None,
) -> tuple[str, str, str]:
    """Log and register the model with its evidence record and model card; returns (version, card, evidence).

    ``tuning``: the search that chose the configuration, recorded with the evaluation's report; ``automatic``:
    a guarded run, whose version the retrain guards count; ``fairness``: the fairness limits applied and their
    sources; ``limits``: every limit against the contract's; ``keys``: the flows' key that seals the evidence
    record (deploy trusts no other); ``flow_run_id``, ``prefect_ui_url``, ``trigger_event_id``: the Prefect flow
    run and the event that started it, linked from the MLflow run.
    """
    from tasks.train import register

    data = dataset.load_training(training, contract)
    evidence = register.evidence_of(training, evaluation, contract, tuning, started_by, now, fairness, limits)
    version, card, evidence_json = register.register(
        tracking_uri,
        data,
        load_model(model_path),
        np.load(evaluation.test_scores),
        evidence,
        evaluation,
        contract,
        config,
        automatic,
        training=training,
        origin=register.Origin(flow_run_id, prefect_ui_url, trigger_event_id),
    )
    if keys is not None:
        seal.seal_evidence(tracking_uri, contract.name, version, evidence_json, keys)
    return version, card, evidence_json
