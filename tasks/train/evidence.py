"""The evidence record kept with every model version, as typed parts: gate verdicts, the evaluation report, the record.

The record is written to MLflow as ``evidence/evidence.json`` and read back as a plain dict (promotion, serving,
the monitor, the model card). A part leaves out what it was not given: a blocked evaluation's report has no
metrics, a gate verdict names the champion only when it compared with one, exactly as the JSON always had it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from tasks.train.coverage import FeatureCoverage
from tasks.train.fit import Tuning


class Part(BaseModel):
    """A part of the evidence record: only the fields it was given are written (absent, not null, otherwise)."""

    model_config = ConfigDict(frozen=True)

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        written: dict[str, Any] = handler(self)
        return {name: value for name, value in written.items() if name in self.model_fields_set}


class GateVerdict(Part):
    """One gate's decision: ``blocked`` when it could not decide (every gate fails closed)."""

    verdict: Literal["pass", "fail", "blocked"]
    compared_with: str | None = None  # the champion's version, for the champion gate
    reason: str = ""
    mitigation: str | None = None  # the fairness gate passed with group thresholds: "threshold_optimizer:<attribute>"


class Mitigation(Part):
    """The group-threshold candidate tried after a failed fairness gate; ``skipped`` says why it was not judged."""

    attribute: str | None = None
    skipped: str | None = None
    method: str | None = None
    policy: dict[str, dict[str, float | str]] | None = None
    fairness: dict[str, Any] | None = None
    confusion: dict[str, int] | None = None
    expected_cost: float | None = None
    expected_cost_single_threshold: float | None = None
    verdict: GateVerdict | None = None


class FairnessRecord(Part):
    """The fairness limits a version was judged by, and where each came from: override, contract or default."""

    limits: dict[str, float | int | str]
    source: dict[str, str]
    override: bool = False


class LimitsRecord(Part):
    """Every limit a version was judged by, its contract's value, and which of them were looser than the contract's.

    A loosened limit (set in the run's form or on the command line) makes the version need a person's approval
    before any promotion, on every profile; ``guards``: the retrain guards of an automatic run.
    """

    values: dict[str, float | int | str]
    contract: dict[str, float | int | str]
    loosened: list[str]
    guards: dict[str, Any] | None = None


class Report(Part):
    """What the evaluation measured on the test window; a blocked evaluation has only the row counts."""

    test_rows: int
    test_positives: int
    metrics: dict[str, float] | None = None
    intervals: dict[str, tuple[float, float]] | None = None
    decision: dict[str, Any] | None = None
    calibration: list[dict[str, Any]] | None = None
    segments: dict[str, Any] | None = None
    best_iteration: int | None = None
    explanations: dict[str, Any] | None = None
    behaviour: dict[str, Any] | None = None
    fairness: dict[str, Any] | None = None
    champion: dict[str, Any] | None = None
    mitigation: Mitigation | None = None
    tuning: Tuning | None = None


class Evaluation(BaseModel):
    """A candidate judged on the test window: report, gate verdicts, decision threshold, figures, test scores."""

    model_config = ConfigDict(frozen=True)

    report: Report
    gates: dict[str, GateVerdict]
    eligible: bool
    threshold: float
    plots: dict[str, bytes] = Field(default_factory=dict)  # PNG figures logged under the run's plots/
    test_scores: str = ""  # a .npy file of the candidate's scores on the test window, in the training set's order


class Evidence(Part):
    """The record of a registered version: lineage, provenance, the evaluation report and the gate verdicts."""

    dataset: str
    contract_version: int
    contract_fingerprint: str
    feature_service: str
    entity_frame_hash: str
    data_window: list[str]
    training_rows: int
    training_positives: int
    feature_coverage: FeatureCoverage | None = None  # the matured applications left out for missing feature rows
    unlabelled_rows: int | None = None  # rows of a flat table without their label yet: left out of training
    fairness_policy: FairnessRecord | None = None  # the fairness limits applied, with their sources
    limits: LimitsRecord | None = None  # every gate limit applied, the contract's, and the loosened ones
    code_commit: str
    started_by: str
    trained_at: str
    report: Report
    gates: dict[str, GateVerdict]
    eligible: bool
    decision_threshold: float
