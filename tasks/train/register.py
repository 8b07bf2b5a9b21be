"""Registering a candidate in MLflow: params, metrics, gate tags, the evidence record and the model card.

With them go the monitor's reference (profile and sample of the test window), the golden rows for infra
validation, and the figures.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from typing import Any

import numpy as np

from closedloop.contract import Contract
from closedloop.lake import parquet_bytes
from closedloop.registry import REFERENCE_PROFILE, REFERENCE_SAMPLE, log_and_register
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
    tags: dict[str, str] = {f"gate.{k}": v.verdict for k, v in evaluation.gates.items()}
    fairness = evaluation.gates.get("fairness")
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
) -> tuple[str, str, str]:
    """Log and register the model with its evidence and model card; returns (version, card, evidence JSON)."""
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
    )
    return version, card, evidence_json
