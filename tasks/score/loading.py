"""A registered model version, ready to score: the model and its decision rule, read from the MLflow registry."""

from __future__ import annotations

from closedloop.registry import load_model, read_evidence
from tasks.score.scoring import ScoringModel


def load_version(tracking_uri: str, dataset: str, version: str, threads: int = 1) -> ScoringModel:
    """A registered version with its decision threshold (or group policy) from its evidence record."""
    model = load_model(tracking_uri, dataset, version)
    return ScoringModel.from_evidence(version, model, read_evidence(tracking_uri, dataset, version), threads)
