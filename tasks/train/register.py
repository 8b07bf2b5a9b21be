"""Registering a candidate in MLflow: params, metrics, gate tags, the evidence record and the model card.

With them go the monitor's reference (profile and sample of the test window), the golden rows for infra
validation, and the figures. The run says what it made and why in its name, links the Prefect flow run and the
event that started it, logs the training set as its input; the model card is also the version's description.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from closedloop.contract import Contract
from closedloop.lake import parquet_bytes
from closedloop.registry import REFERENCE_PROFILE, REFERENCE_SAMPLE, RunContext, log_and_register
from closedloop.settings import PROJECT_ROOT
from tasks.shared.drift import SCORE, expected_auc, profile_frame
from tasks.shared.features import EVENT_TIMESTAMP, feature_names
from tasks.train.dataset import TrainingData, TrainingSet
from tasks.train.evidence import Evaluation, Evidence, FairnessRecord, LimitsRecord
from tasks.train.fit import TrainingConfig, Tuning
from tasks.train.guards import AUTOMATIC_TAG
from tasks.train.model_card import model_card

GOLDEN_ROWS = 50  # test rows kept with each version, re-scored by infra validation
REFERENCE_SAMPLE_ROWS = 5000
SCHEMA_ROWS = 1000  # rows the training input's schema is read from
FAIRNESS_MEASURES = ("demographic_parity_difference", "equalized_odds_difference", "disparate_impact")


@dataclass(frozen=True)
class Origin:
    """What started a training run: its Prefect flow run (id, and the Prefect UI to link it) and the event, if any."""

    flow_run_id: str | None = None
    prefect_ui_url: str | None = None
    trigger_event_id: str | None = None

    @property
    def flow_run_url(self) -> str | None:
        """The flow run's page in the Prefect UI."""
        if not (self.flow_run_id and self.prefect_ui_url):
            return None
        return f"{self.prefect_ui_url.rstrip('/')}/runs/flow-run/{self.flow_run_id}"


def reason(started_by: str, automatic: bool) -> str:
    """Why a run trained, in a few words: the drift trigger, the weekly guarded schedule, or a person's request."""
    if started_by.startswith("event:"):  # the only event that starts train-evaluate is the drift alert
        return "drift retrain"
    if automatic:
        return "scheduled retrain" if started_by.startswith("deployment:") else "guarded retrain"
    return "manual"


def run_name(why: str, start: datetime, end: datetime, version: str | None = None) -> str:
    """``train v3 - drift retrain 2025-06..2025-11``: the version made (once registered), why, the data's months."""
    months = f"{start:%Y-%m}" if f"{start:%Y-%m}" == f"{end:%Y-%m}" else f"{start:%Y-%m}..{end:%Y-%m}"
    return f"{f'train v{version}' if version else 'train'} - {why} {months}"


def code_commit() -> str:
    """The git commit of the code that trained the model ("unknown" outside a checkout)."""
    try:
        command = ["git", "rev-parse", "HEAD"]  # read-only, git from PATH
        out = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=False)  # noqa: S603
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def evidence_of(
    training: TrainingSet,
    evaluation: Evaluation,
    contract: Contract,
    tuning: Tuning | None,
    started_by: str,
    now: datetime,
    fairness: FairnessRecord | None = None,
    limits: LimitsRecord | None = None,
) -> Evidence:
    """The evidence record of a candidate: lineage, provenance, the evaluation (with the search, if any), gates.

    ``fairness``: the fairness limits the gates applied and where each came from (override, contract, default);
    ``limits``: every gate limit against the contract's, and the retrain guards.
    """
    report = evaluation.report if tuning is None else evaluation.report.model_copy(update={"tuning": tuning})
    given: dict[str, Any] = {}
    if training.unlabelled_rows:
        given["unlabelled_rows"] = training.unlabelled_rows
    if fairness is not None:
        given["fairness_policy"] = fairness
    if limits is not None:
        given["limits"] = limits
    return Evidence(
        dataset=contract.name,
        contract_version=contract.version,
        contract_fingerprint=contract.fingerprint,
        feature_service=training.feature_service,
        entity_frame_hash=training.entity_hash,
        data_window=[training.window_start.isoformat(), training.window_end.isoformat()],
        training_rows=training.rows,
        training_positives=training.positives,
        feature_coverage=training.coverage,
        code_commit=code_commit(),
        started_by=started_by,
        trained_at=now.isoformat(),
        report=report,
        gates=evaluation.gates,
        eligible=evaluation.eligible,
        decision_threshold=evaluation.threshold,
        **given,
    )


def run_record(
    evidence: dict[str, Any], evaluation: Evaluation, contract: Contract, config: TrainingConfig, automatic: bool
) -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
    """The MLflow run's params and metrics, and the version's tags (a gate verdict each, eligibility, policy)."""
    report = evidence["report"]
    metrics = {f"test_{k}": v for k, v in report.get("metrics", {}).items()}
    for name, (low, high) in report.get("intervals", {}).items():
        metrics[f"test_{name}_ci_low"], metrics[f"test_{name}_ci_high"] = low, high
    fairness = evaluation.gates.get("fairness")
    metrics.update(decision_metrics(report, evaluation.threshold, bool(fairness and fairness.mitigation)))
    tags: dict[str, str] = {f"gate.{k}": v.verdict for k, v in evaluation.gates.items()}
    tags.update(
        {
            "eligible": str(evaluation.eligible).lower(),
            "contract_fingerprint": contract.fingerprint,
            "feature_service": evidence["feature_service"],
            "started_by": evidence["started_by"],
            "decision_threshold": f"{evaluation.threshold:.6f}",
            "decision_policy": (fairness.mitigation if fairness else None) or "single_threshold",
        }
    )
    if automatic:  # the retrain guards count these
        tags[AUTOMATIC_TAG] = "true"
    params = {
        **config.model_dump(),
        "features": ",".join(feature_names(contract)),
        "entity_frame_hash": evidence["entity_frame_hash"],
    }
    policy = evidence.get("fairness_policy")
    if policy:  # the limits the fairness gate applied, each with where it came from
        params.update({f"fairness.{name}": value for name, value in policy["limits"].items()})
        params.update({f"fairness.{name}.source": source for name, source in policy["source"].items()})
        tags["fairness.override"] = str(policy.get("override", False)).lower()
    limits = evidence.get("limits")
    if limits:  # every limit the gates applied, the contract's where it differs, and the guards of the run
        params.update({f"limit.{name}": value for name, value in limits["values"].items()})
        params.update(
            {
                f"limit.{name}.contract": limits["contract"][name]
                for name in limits["values"]
                if limits["values"][name] != limits["contract"][name]
            }
        )
        params.update({f"guard.{name}": value for name, value in (limits.get("guards") or {}).items()})
        tags["limits.loosened"] = ",".join(limits["loosened"]) or "none"
    return params, metrics, tags


def decision_metrics(report: dict[str, Any], threshold: float, group_thresholds: bool) -> dict[str, float]:
    """The decision rule the version deploys, as metrics: its threshold, expected cost and fairness per attribute.

    With group thresholds (the fairness gate passed through them) the expected cost and the fairness measures
    are those of the group thresholds; ``decision_threshold`` stays the single cost-minimising threshold they
    replace. An attribute the analysis could not judge (too few rows per group) has no fairness metric.
    """
    mitigation = report.get("mitigation") or {}
    deployed = mitigation if group_thresholds else {}
    metrics = {"decision_threshold": threshold}
    cost = deployed.get("expected_cost", (report.get("decision") or {}).get("expected_cost"))
    if cost is not None:
        metrics["test_expected_cost"] = float(cost)
    fairness = deployed.get("fairness") or report.get("fairness") or {}
    for attribute, measured in fairness.items():
        for measure in FAIRNESS_MEASURES:
            value = measured.get(measure)
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[f"fairness.{attribute}.{measure}"] = float(value)
    return metrics


def run_tags(evidence: dict[str, Any], origin: Origin) -> dict[str, str]:
    """The MLflow run's tags that say where it came from, and its description (a note with the Prefect link)."""
    start, end = (day[:10] for day in evidence["data_window"])
    tags = {
        "closedloop.contract_fingerprint": evidence["contract_fingerprint"],
        "closedloop.contract_version": str(evidence["contract_version"]),
        "closedloop.started_by": evidence["started_by"],
        "closedloop.data_window": f"{start}..{end}",
    }
    note = [
        f"Trained on `{evidence['dataset']}` applications of {start}..{end} ({evidence['training_rows']:,} rows), "
        f"contract v{evidence['contract_version']} (`{evidence['contract_fingerprint'][:12]}`).",
        f"Started by: {evidence['started_by']}.",
    ]
    if origin.trigger_event_id:
        tags["closedloop.trigger_event_id"] = origin.trigger_event_id
    if origin.flow_run_id:
        tags["closedloop.prefect_flow_run_id"] = origin.flow_run_id
    if origin.flow_run_url:
        tags["closedloop.prefect_flow_run"] = origin.flow_run_url
        note.append(f"Prefect flow run: [{origin.flow_run_id}]({origin.flow_run_url}).")
    note.append("Evidence, model card and figures: the run's artifacts (`evidence/`, `plots/`).")
    tags["mlflow.note.content"] = "\n\n".join(note)  # shown as the run's description in the MLflow UI
    return tags


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's bytes (a million-row training set, 24 MB: 0.02 s)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def training_dataset(training: TrainingSet, frame: pd.DataFrame, contract: Contract) -> Any:
    """The training set as an MLflow dataset: its parquet file's URI and digest, its schema, rows and label.

    The schema is read from the first rows: MLflow infers it value by value, 10 s on 420,000 rows.
    """
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.models import infer_signature

    # a file:// URI resolves to two equal local sources, and MLflow warns on each run: name the kind instead
    source = get_dataset_source_from_json(json.dumps({"uri": training.uri}), source_type="local")
    name = f"{contract.name} {training.window_start:%Y-%m-%d}..{training.window_end:%Y-%m-%d}"
    dataset = from_pandas(
        frame, source=source, targets=contract.label.column, name=name, digest=file_digest(training.path)
    )
    dataset.schema = infer_signature(frame.head(SCHEMA_ROWS)).inputs  # set before MLflow computes it (cached)
    return dataset


def reference_documents(
    data: TrainingData, model: Any, test_scores: np.ndarray, evaluation: Evaluation, contract: Contract
) -> dict[str, str | bytes]:
    """The golden rows (infra validation), and the monitor's reference: the test window's profile and a sample."""
    test = data.split("test")
    names = feature_names(contract)
    golden_rows = data.frame.loc[test, names].head(GOLDEN_ROWS).astype(object)
    golden = {
        "rows": golden_rows.where(golden_rows.notna(), None).to_dict(orient="records"),
        "scores": [float(v) for v in model.predict_proba(data.features[test].head(GOLDEN_ROWS))[:, 1]],
    }
    test_frame = data.frame.loc[test, names]
    profile = profile_frame(test_frame, contract, names, test_scores)
    times = data.frame.loc[test, EVENT_TIMESTAMP]
    profile.update(
        test_metrics=evaluation.report.metrics or {},
        decision_threshold=evaluation.threshold,
        expected_auc=expected_auc(test_scores),
        window=[str(times.min()), str(times.max())],
    )
    sample = test_frame.assign(**{SCORE: test_scores}).sample(
        n=min(REFERENCE_SAMPLE_ROWS, len(test_frame)), random_state=0
    )
    return {
        REFERENCE_PROFILE: json.dumps(profile, default=str),
        REFERENCE_SAMPLE: parquet_bytes(sample.reset_index(drop=True)),
        "golden.json": json.dumps(golden, default=str),
    }


def register(
    tracking_uri: str,
    data: TrainingData,
    model: Any,
    test_scores: np.ndarray,
    evidence: Evidence,
    evaluation: Evaluation,
    contract: Contract,
    config: TrainingConfig,
    automatic: bool = False,
    training: TrainingSet | None = None,
    origin: Origin | None = None,
) -> tuple[str, str, str]:
    """Log and register the model with its evidence and model card; returns (version, card, evidence JSON).

    ``training``: the training set, logged as the run's input; ``origin``: the flow run and event to link.
    """
    record = evidence.model_dump()
    card = model_card(contract.name, record)
    params, metrics, tags = run_record(record, evaluation, contract, config, automatic)
    references = reference_documents(data, model, test_scores, evaluation, contract)
    evidence_json = json.dumps(record, indent=2, default=str)
    documents: dict[str, str | bytes] = {
        "evidence.json": evidence_json,
        REFERENCE_PROFILE: references[REFERENCE_PROFILE],
        REFERENCE_SAMPLE: references[REFERENCE_SAMPLE],
        "model_card.md": card,
        "golden.json": references["golden.json"],
    }
    example = data.features[data.split("train")].head(50)
    start, end = (datetime.fromisoformat(day) for day in record["data_window"])
    context = RunContext(
        name=partial(run_name, reason(record["started_by"], automatic), start, end),
        tags=run_tags(record, origin or Origin()),
        dataset=training_dataset(training, data.frame, contract) if training is not None else None,
        description=card,
    )
    version = log_and_register(
        tracking_uri,
        contract.name,
        model,
        example,
        params,
        metrics,
        tags,
        documents,
        evaluation.eligible,
        plots=evaluation.plots,
        context=context,
    )
    return version, card, evidence_json
