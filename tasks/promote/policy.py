"""Promotion rules: who may become champion, how a rollout is planned and judged, what infra validation accepts.

Pure decisions on small records (evidence, alias values, measurements, the inference log's rows). The registry,
the subprocess and the inference log are read in ``promotion.py`` and ``infra_check.py``; what they read is
decided here, so every rule has a unit test without a server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

GOLDEN_ROWS = 50
TOLERANCE = 1e-6  # largest |difference| allowed between the packaged scorer and the training-time scores

Strategy = Literal["direct", "shadow", "canary"]
RolloutStrategy = Literal["shadow", "canary"]
RolloutVerdict = Literal["passed", "failed", "rolled back"]


class DeployError(RuntimeError):
    """A deployment step refused to go on; the message says why. Nothing was promoted."""


class PromotionConflict(DeployError):
    """The champion moved since the challenger was evaluated: re-evaluate against the new champion."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- which version, and the alias moves ----------------------------------------------------------------------


class Candidate(_Record):
    """A version allowed to be deployed and the champion its comparison gate was run against.

    ``approval_required``: why a person must approve it whatever the deploy run asks (None: nothing requires it).
    """

    version: str
    compared_with: str | None
    approval_required: str | None = None


class Promotion(_Record):
    """The aliases after a promotion: ``champion`` is the new version, ``previous`` the one it replaced."""

    champion: str
    previous: str | None


class Rollback(_Record):
    """The aliases after a rollback: the previous champion is back, the rolled-back version becomes ``previous``."""

    champion: str
    rolled_back: str


def eligible_candidate(name: str, version: str, evidence: dict[str, Any]) -> Candidate:
    """The version as a candidate, or :class:`DeployError` when its evidence does not say it passed every gate."""
    if not evidence.get("eligible"):
        failed = {k: v["verdict"] for k, v in evidence.get("gates", {}).items() if v.get("verdict") != "pass"}
        raise DeployError(f"{name} v{version} is not eligible for promotion (gates: {failed})")
    compared_with = evidence.get("gates", {}).get("champion", {}).get("compared_with")
    return Candidate(
        version=version,
        compared_with=None if compared_with is None else str(compared_with),
        approval_required=limits_approval(evidence),
    )


def limits_approval(evidence: dict[str, Any]) -> str | None:
    """Why the version's limits need a person's approval before promotion; None when they are the contract's.

    Fails closed: a version that does not record the limits it was judged by needs approval too.
    """
    limits = evidence.get("limits")
    if not isinstance(limits, dict) or not isinstance(limits.get("loosened"), list):
        return "the version does not record the limits it was judged by"
    if not limits["loosened"]:
        return None
    looser = ", ".join(
        f"{name} {limits['values'][name]} (contract: {limits['contract'][name]})" for name in limits["loosened"]
    )
    return f"judged by limits looser than its contract's: {looser}"


def approval_reason(candidate: Candidate, requested: bool | None, production: bool) -> str | None:
    """Why a person must approve this deploy (None: nobody needs to).

    The version's loosened limits require it on every profile, and ``requested=False`` cannot waive that;
    otherwise as requested, else always in production and never locally.
    """
    if candidate.approval_required:
        return candidate.approval_required
    if requested if requested is not None else production:
        return "requested by the deploy run" if requested else "every promotion in production is approved"
    return None


def plan_promotion(name: str, version: str, champion: str | None, compared_with: str | None) -> Promotion:
    """Compare-and-set: ``version`` may replace the champion only if the champion is still ``compared_with``."""
    if champion == version:
        raise DeployError(f"{name} v{version} is already the champion")
    if champion != compared_with:
        raise PromotionConflict(
            f"the champion of {name} is v{champion}, but v{version} was compared with "
            f"{'v' + compared_with if compared_with else 'no champion'}: re-evaluate it against v{champion}"
        )
    return Promotion(champion=version, previous=champion)


def plan_rollback(name: str, champion: str | None, previous: str | None) -> Rollback:
    """The previous champion comes back; refused when there is no previous champion or no champion at all."""
    if previous is None:
        raise DeployError(f"{name} has no previous champion to roll back to")
    if champion is None:
        raise DeployError(f"{name} has no champion to roll back")
    return Rollback(champion=previous, rolled_back=champion)


# --- infra validation ------------------------------------------------------------------------------------------


class InfraMeasurement(_Record):
    """What the fresh interpreter measured on the packaged scorer (``python -m tasks.promote.infra_check``)."""

    version: str
    scorer_uri: str
    golden_rows: int
    max_abs_difference: float
    latency_p50_ms: float
    latency_p95_ms: float
    load_seconds: float


class InfraReport(InfraMeasurement):
    """The measurement judged against the tolerance and the latency budget."""

    latency_budget_ms: float
    verdict: Literal["pass", "fail"]
    problems: list[str]


def golden_difference(scores: Sequence[float] | np.ndarray, expected: Sequence[float] | np.ndarray) -> float:
    """Largest |difference| between the scorer's answers and the golden scores, row by row."""
    got, want = np.asarray(scores, dtype="float64"), np.asarray(expected, dtype="float64")
    if got.shape != want.shape or got.size == 0:
        raise ValueError(f"{got.size} scores for {want.size} golden records: cannot compare")
    return float(np.max(np.abs(got - want)))


def judge_infra(measured: InfraMeasurement, latency_budget_ms: float) -> InfraReport:
    """Pass only when the golden records score within :data:`TOLERANCE` and one request fits the budget."""
    problems = []
    if measured.max_abs_difference > TOLERANCE:
        problems.append(
            f"golden records scored differently: max |difference| {measured.max_abs_difference:.3g} > {TOLERANCE}"
        )
    if measured.latency_p50_ms > latency_budget_ms:
        problems.append(
            f"single-request latency {measured.latency_p50_ms:.1f} ms over the {latency_budget_ms} ms budget"
        )
    return InfraReport(
        **measured.model_dump(),
        latency_budget_ms=latency_budget_ms,
        verdict="fail" if problems else "pass",
        problems=problems,
    )


# --- shadow and canary rollouts --------------------------------------------------------------------------------


class RolloutPlan(_Record):
    """A rollout as the scoring services read it from the candidate's ``rollout.*`` tags."""

    strategy: RolloutStrategy
    share: float = Field(ge=0, lt=1, description="canary: the share of entities it answers for; shadow: 0")
    max_error_rate: float = Field(ge=0, le=1)
    max_p99_ms: float = Field(gt=0)
    min_requests: int = Field(ge=1, description="candidate answers needed to pass")
    champion: str | None = None  # the champion when the rollout started

    def tags(self) -> dict[str, str]:
        """The version tags that start it (the services route to a candidate whose verdict is ``running``)."""
        return {f"rollout.{key}": str(value) for key, value in {**self.model_dump(), "verdict": "running"}.items()}


def plan_rollout(
    strategy: RolloutStrategy, canary_share: float, max_error_rate: float, max_p99_ms: float, min_requests: int
) -> RolloutPlan:
    """The plan of a shadow (every request, share 0) or a canary (a sticky share of entities)."""
    return RolloutPlan(
        strategy=strategy,
        share=canary_share if strategy == "canary" else 0.0,
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
        min_requests=min_requests,
    )


def rollout_running(state: dict[str, str] | None, version: str) -> bool:
    """Whether the registry's rollout state (``promotion.rollout_state``) is ``version``'s, still running."""
    return state is not None and state["version"] == version and state.get("verdict") == "running"


def check_no_other_rollout(name: str, candidate: str | None, version: str) -> None:
    """One rollout at a time: refuses when another version holds the candidate alias."""
    if candidate is not None and candidate != version:
        raise DeployError(f"{name} v{candidate} is already being rolled out: end that rollout first")


_MEASURED_WHEN_SEEN = ("p99_ms", "paired_with_champion", "mean_abs_score_difference", "decision_agreement")


class RolloutStats(_Record):
    """What the inference log shows of a candidate: its answers, their p99, (shadow) its agreement with the champion."""

    requests: int | None = None
    p99_ms: float | None = None
    paired_with_champion: int | None = None
    mean_abs_score_difference: float | None = None
    decision_agreement: float | None = None

    @model_serializer(mode="wrap")
    def _measured_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Figures that were not measured are left out of the record (as the deployment history always had it)."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in _MEASURED_WHEN_SEEN}


class RolloutOutcome(RolloutPlan, RolloutStats):
    """The plan, what was observed and the verdict: ``passed`` is the only one that lets the deploy promote."""

    verdict: RolloutVerdict
    reason: str


def rollout_stats(logged: pd.DataFrame, version: str, strategy: RolloutStrategy) -> RolloutStats:
    """The candidate's answers in an inference-log window; a shadow's are paired with the champion's by request."""
    mine = logged[(logged["model_version"] == version) & (logged["variant"] == strategy)]
    if not len(mine):
        return RolloutStats(requests=0)
    figures: dict[str, Any] = {"p99_ms": round(float(np.percentile(mine["latency_ms"], 99)), 3)}
    if strategy == "shadow":
        twins = logged[logged["variant"] == "champion"].set_index("request_id")
        paired = mine.join(twins[["score", "decision"]], on="request_id", rsuffix="_champion", how="inner")
        if len(paired):
            figures["paired_with_champion"] = len(paired)
            difference = (paired["score"] - paired["score_champion"]).abs().mean()
            figures["mean_abs_score_difference"] = round(float(difference), 6)
            agreement = (paired["decision"] == paired["decision_champion"]).mean()
            figures["decision_agreement"] = round(float(agreement), 4)
    return RolloutStats(requests=len(mine), **figures)


def judge_rollout(plan: RolloutPlan, stats: RolloutStats, observe_seconds: float) -> RolloutOutcome:
    """Fails closed: too few logged answers is a failed rollout, not a pass; then the p99 must fit the budget."""
    requests = stats.requests or 0
    verdict: RolloutVerdict
    if requests < plan.min_requests:
        verdict = "failed"
        reason = f"only {requests} answers logged in {observe_seconds} s (needs {plan.min_requests})"
    elif stats.p99_ms is None or stats.p99_ms > plan.max_p99_ms:
        verdict, reason = "failed", f"p99 latency {stats.p99_ms} ms over budget {plan.max_p99_ms} ms"
    else:
        verdict, reason = "passed", f"{requests} answers within budget"
    return RolloutOutcome(**plan.model_dump(), **stats.model_dump(), verdict=verdict, reason=reason)


def rolled_back(plan: RolloutPlan, history: list[dict[str, Any]]) -> RolloutOutcome:
    """A rollout a scoring service ended: the reason and answer count its guard recorded, if it did."""
    ended: dict[str, Any] = next((e for e in reversed(history) if e.get("action") == "rollout rolled back"), {})
    return RolloutOutcome(
        **plan.model_dump(),
        requests=ended.get("requests"),
        verdict="rolled back",
        reason=ended.get("reason", "ended outside this run"),
    )
