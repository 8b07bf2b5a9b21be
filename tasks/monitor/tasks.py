"""The monitor's Prefect tasks: judge a window, judge a chunk of its columns, report, verify a new champion.

Each reads what it needs (the champion's reference, the lake's outcomes) and calls the pure code of
:mod:`tasks.monitor.window`, :mod:`tasks.monitor.report` and :mod:`tasks.monitor.verification`; the skew check
re-reads a sample of the window from the offline store through :mod:`tasks.monitor.skew`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from closedloop.contract import Contract, Drift
from closedloop.lake import Lake
from closedloop.registry import load_model, read_evidence, training_experiment
from closedloop.settings import Settings
from tasks.monitor import records, report, skew, sources, verification, window
from tasks.monitor.fairness_drift import FairnessDrift
from tasks.monitor.policy import MonitorPolicy
from tasks.shared.drift import column_drift, drift_rules, window_drift
from tasks.shared.features import feature_names, typed_features

logger = logging.getLogger(__name__)


@task(name="judge_window", cache_policy=NO_CACHE)
def judge_window(
    settings: Settings,
    contract: Contract,
    lake: Lake,
    frame: pd.DataFrame,
    champion: str,
    policy: MonitorPolicy,
    now: datetime,
    drift: dict[str, Any] | None = None,
) -> window.Verdicts:
    """Drift of every feature and of the score, quality, performance (labelled, estimated), fairness, violations.

    Fairness drift compares the served decisions with the champion's evidence record.
    ``drift``: the window's drift record when it was already computed on a cluster (the ``drift_by_chunks`` flow).
    """
    profile = sources.reference_profile(settings.mlflow_tracking_uri, contract.name, champion)
    if drift is None:
        scores = frame["score"].to_numpy(dtype="float64")
        drift = window_drift(profile, frame, drift_rules(contract, feature_names(contract)), scores)
    rows = window.attach_outcomes(contract, frame, sources.outcome_tables(lake, contract), now)
    evidence = read_evidence(settings.mlflow_tracking_uri, contract.name, champion) if contract.sensitive else None
    return window.verdicts(contract, frame, rows, profile, drift, policy, evidence)


@task(name="column_drift_chunk", cache_policy=NO_CACHE)
def column_drift_chunk(
    window_uri: str, reference: dict[str, Any], rules: dict[str, Drift], endpoint_url: str | None
) -> list[dict[str, Any]]:
    """Drift verdicts of one chunk of columns; the worker reads only its columns of the staged window."""
    staged = sources.read_columns(window_uri, list(rules), endpoint_url)
    return [column_drift(name, reference[name], staged[name], rule).to_dict() for name, rule in rules.items()]


def _fairness_metrics(fairness: FairnessDrift) -> dict[str, float]:
    """The fairness verdict as MLflow metrics: per attribute its disparities and drifted groups, and the total."""
    found: dict[str, float] = {"fairness_drifted_attributes": float(len(fairness.drifted))}
    for name, judged in fairness.attributes.items():
        measures = {
            "demographic_parity_difference": judged.demographic_parity_difference,
            "disparate_impact": judged.disparate_impact,
            "tpr_gap": judged.tpr_gap,
            "fpr_gap": judged.fpr_gap,
            "drifted_groups": float(len(judged.drifted_groups)),
        }
        found.update({f"fairness.{name}.{m}": float(v) for m, v in measures.items() if v is not None})
    return found


def _log_report(
    tracking_uri: str,
    dataset: str,
    champion: str,
    span: window.Span,
    verdicts: window.Verdicts,
    found: report.DriftReport,
) -> tuple[str, str]:
    """One run of the dataset's monitoring experiment, named by its window: the report, both verdicts, fairness.

    Returns the experiment's and the run's ids (the report's page in MLflow's UI needs both).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = f"{dataset}-monitoring"
    experiment_id = training_experiment(tracking_uri, experiment)  # marked as model training, not GenAI
    start, end = datetime.fromisoformat(span.start), datetime.fromisoformat(span.end)
    name = f"monitor {records.window_label(start, end)} v{champion}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(
            {
                "closedloop.dataset": dataset,
                "champion": champion,
                "closedloop.window_start": span.start,
                "closedloop.window_end": span.end,
                "violations": ",".join(verdicts.violations) or "none",
                "feature_drift": str("feature_drift" in verdicts.violations).lower(),
                "evidently_dataset_drift": str(found.dataset_drift).lower(),
            }
        )
        mlflow.log_text(found.html, report.REPORT_PATH)
        mlflow.log_metric("drifted_columns_evidently", sum(found.columns.values()))
        mlflow.log_metric("drifted_columns_fast", sum(verdicts.fast_drift().values()))
        fairness = verdicts.fairness_drift
        if fairness is not None:
            mlflow.log_metrics(_fairness_metrics(fairness))
            mlflow.set_tag("fairness_drift", ",".join(fairness.drifted) or "none")
            mlflow.log_dict(fairness.model_dump(mode="json"), "fairness/fairness_drift.json")
    return str(experiment_id), str(run.info.run_id)


@task(name="evidently_report", cache_policy=NO_CACHE)
def evidently_report(
    settings: Settings,
    contract: Contract,
    lake: Lake,
    frame: pd.DataFrame,
    champion: str,
    span: window.Span,
    verdicts: window.Verdicts,
    drift_share: float,
) -> report.Agreement:
    """Evidently's report on a sample of the window, under our drift rule: in the lake, in MLflow, linked from Prefect.

    The window's MLflow run also carries its fairness verdict (metrics per attribute, the verdict as JSON). The
    link is MLflow's page of the report, which renders it in a browser (a lake URI may be a path on the server).
    """
    tracking_uri = settings.mlflow_tracking_uri
    sample = sources.reference_sample(tracking_uri, contract.name, champion)
    found = report.drift_report(sample, frame, contract, feature_names(contract), drift_share)
    uri = records.write_report(lake, datetime.fromisoformat(span.end), found.html)
    experiment_id, run_id = _log_report(tracking_uri, contract.name, champion, span, verdicts, found)
    url = report.mlflow_artifact_url(tracking_uri, experiment_id, run_id, report.REPORT_PATH)
    label = records.window_label(datetime.fromisoformat(span.start), datetime.fromisoformat(span.end))
    create_link_artifact(link=url, link_text="Evidently data drift report", description=f"window {label}, in MLflow")
    ours = "feature_drift" in verdicts.violations
    return report.agreement(uri, run_id, url, found, verdicts.fast_drift(), ours, drift_share)


@task(name="post_deploy_verification", cache_policy=NO_CACHE)
def verify_new_champion(
    settings: Settings,
    contract: Contract,
    lake: Lake,
    frame: pd.DataFrame,
    champion: str,
    violations: list[str],
    earlier: list[str],
    margin: float,
) -> verification.Verification:
    """First judged window of a new champion: are the violations that led to it gone, and is it no worse?

    ``earlier``: the violations of the last window judged for the champion before it.
    """
    tracking_uri, name = settings.mlflow_tracking_uri, contract.name
    previous = sources.previous_version(tracking_uri, name)
    if previous is None:
        return verification.uncompared(champion, earlier, violations, verification.NO_PREVIOUS)
    rows = window.attach_outcomes(contract, frame, sources.outcome_tables(lake, contract), datetime.now(UTC))
    known, y = window.labelled(contract, rows)
    if not verification.enough_labels(y):
        return verification.uncompared(champion, earlier, violations, verification.TOO_FEW_LABELS, len(y))
    served = window.labelled_requests(frame, rows, known)
    previous_scores = load_model(tracking_uri, name, previous).predict_proba(typed_features(served, contract))[:, 1]
    champion_scores = served["score"].to_numpy(dtype="float64")
    return verification.compare(champion, earlier, violations, previous, y, champion_scores, previous_scores, margin)


def _log_skew(tracking_uri: str, dataset: str, champion: str, end: datetime, verdict: skew.SkewVerdict) -> str:
    """One run of the dataset's monitoring experiment with each compared feature's mismatch share."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    experiment = f"{dataset}-monitoring"
    experiment_id = training_experiment(tracking_uri, experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"skew {end:%Y-%m-%d %H:%M:%S} UTC v{champion}") as run:
        mlflow.set_tags({"closedloop.dataset": dataset, "champion": champion, "closedloop.check": "skew"})
        mlflow.log_metrics({f"skew_share.{f.feature}": f.share for f in verdict.features})
        mlflow.log_metrics({"skew_sampled": verdict.sampled, "skewed_features": len(verdict.skewed)})
        mlflow.log_dict(verdict.as_record(), "skew/verdict.json")
    return str(run.info.run_id)


@task(name="training_serving_skew", cache_policy=NO_CACHE)
def training_serving_skew(
    settings: Settings, contract: Contract, frame: pd.DataFrame, champion: str, end: datetime, seed: int = 0
) -> skew.SkewVerdict:
    """A seeded sample of the window's answered requests re-read point-in-time through the FeatureService.

    The verdict (per feature: mismatches, served or offline missing, example keys) is logged to the dataset's
    monitoring experiment; its run id comes back in ``mlflow_run``.
    """
    from feature_repo.store import open_store

    verdict = skew.check(open_store(settings, contract), contract, frame, seed)
    if verdict.status != "judged":
        return verdict
    run_id = _log_skew(settings.mlflow_tracking_uri, contract.name, champion, end, verdict)
    return verdict.model_copy(update={"mlflow_run": run_id})
