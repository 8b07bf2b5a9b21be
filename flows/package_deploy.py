"""The package/deploy flow: eligible version -> bundle -> infra validation -> (approval) -> atomic promotion."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, pause_flow_run, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.input import RunInput
from pydantic import BaseModel, Field

from closedloop import events, seal
from closedloop.contract import contract_at
from closedloop.settings import Profile, load_settings
from tasks.promote import policy, promotion
from tasks.promote.tasks import infra_validation, observe_rollout, package_scorer, write_bundle


class DeployParams(BaseModel):
    """What to deploy; Prefect renders this as the run form in the UI."""

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    version: str | None = Field(default=None, description="registered version; empty: the challenger")
    require_approval: bool | None = Field(
        default=None,
        description="pause for a human decision in the UI; empty: on in production, off locally. A version judged "
        "by limits looser than its contract's is always approved by a person, whatever this says",
    )
    approved_by: str | None = Field(
        default=None,
        min_length=1,
        description="a person's approval given with the run (`closedloop deploy --approve-as NAME`): recorded and "
        "sealed with the promotion; empty: the run pauses for one in the UI when an approval is needed",
    )
    approval_comment: str = Field(default="", description="the approver's reasons, kept with the approval")
    approval_timeout_s: int = Field(default=24 * 3600, ge=10)
    latency_budget_ms: float = Field(default=50.0, gt=0, description="single-request scoring latency budget")
    strategy: policy.Strategy = Field(
        default="direct",
        description="direct: promote at once; shadow: the candidate also scores every request (not returned); "
        "canary: the candidate answers a sticky share of entities. Both are watched, then promoted or rolled back",
    )
    canary_share: float = Field(default=0.1, gt=0, lt=1, description="canary: share of entities it answers for")
    observe_seconds: int = Field(default=600, ge=1, description="shadow/canary: how long to watch before promoting")
    min_requests: int = Field(default=200, ge=1, description="shadow/canary: candidate answers needed to promote")
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="shadow/canary: candidate error budget")
    max_p99_ms: float = Field(default=50.0, gt=0, description="shadow/canary: candidate p99 latency budget")
    trigger_event_id: str | None = None


class Approval(RunInput):
    """The approval form shown in the Prefect UI while the deploy run is paused."""

    approve: bool = Field(description="promote this version to champion")
    reviewer: str = Field(min_length=1, description="who decides (recorded in the evidence)")
    comment: str = ""


class DeployResult(BaseModel):
    dataset: str
    version: str
    promoted: bool
    champion: str | None
    previous: str | None
    bundle_uri: str | None
    infra: policy.InfraReport
    approval: dict[str, Any] | None
    reason: str
    event_id: str | None = None
    rollout: policy.RolloutOutcome | None = None


@flow(name="package_deploy")
def package_deploy(params: DeployParams | None = None) -> DeployResult:
    """Deploy an eligible version: bundle it, validate it in a fresh interpreter, ask, then promote it atomically."""
    params = params or DeployParams()
    logger = get_run_logger()
    settings = load_settings()
    contract_file = str(params.contract or settings.contract)
    contract = contract_at(contract_file)
    uri, name = settings.mlflow_tracking_uri, contract.name
    keys = seal.key_files(settings)
    candidate = promotion.resolve_candidate(uri, name, params.version, keys)
    version = candidate.version
    started_by = f"event:{params.trigger_event_id}" if params.trigger_event_id else f"flow run {runtime.flow_run.id}"

    scorer_uri = package_scorer(settings, contract, contract_file, version)
    logger.info("v%s packaged as %s", version, scorer_uri)
    bundle = write_bundle(settings, contract, contract_file, version)
    infra = infra_validation(settings, contract, version, params.latency_budget_ms)
    result = DeployResult(
        dataset=name,
        version=version,
        promoted=False,
        champion=None,
        previous=None,
        bundle_uri=bundle.uri,
        infra=infra,
        approval=None,
        reason="",
    )
    if infra.verdict != "pass":
        return _refused(uri, result, "infra validation failed: " + "; ".join(infra.problems), started_by)
    why = policy.approval_reason(candidate, params.require_approval, settings.profile is Profile.PRODUCTION)
    if why:
        if params.approved_by:
            answer = Approval(approve=True, reviewer=params.approved_by, comment=params.approval_comment)
        else:
            answer = _ask_approval(uri, name, version, infra, params.approval_timeout_s, why)
        approval = {**answer.model_dump(), "required_because": why}
        result = result.model_copy(update={"approval": approval})
        promotion.record(uri, name, version, {"action": "approval", **approval})
        logger.info("v%s approval (%s): %s by %s", version, why, answer.approve, answer.reviewer)
        if not answer.approve:
            return _refused(uri, result, f"not approved by {answer.reviewer}: {answer.comment}", started_by)
    if params.strategy != "direct":
        plan = policy.plan_rollout(
            params.strategy, params.canary_share, params.max_error_rate, params.max_p99_ms, params.min_requests
        )
        rollout = observe_rollout(settings, contract, version, plan, params.observe_seconds, started_by)
        result = result.model_copy(update={"rollout": rollout})
        if rollout.verdict != "passed":
            why = f"{params.strategy} rollout {rollout.verdict}: {rollout.reason}"
            return _refused(uri, result, why, started_by)
    try:
        moved = promotion.promote(
            uri, name, version, candidate.compared_with, keys, by=started_by, approval=result.approval
        )
    except policy.DeployError as exc:
        return _refused(uri, result, str(exc), started_by)
    return _promoted(uri, result, moved, params.strategy, started_by)


def _ask_approval(uri: str, name: str, version: str, infra: policy.InfraReport, timeout_s: int, why: str) -> Approval:
    """Show the model card and the verdicts in the UI, pause the run, and return the reviewer's answer."""
    card = promotion.model_card(uri, name, version)
    create_markdown_artifact(
        key=f"approve-{name.replace('_', '-')}-v{version}",
        markdown=f"# Approve {name} v{version}?\n\nApproval needed: {why}\n\n"
        f"Infra validation: {infra.model_dump()}\n\n{card}",
        description="model card and gate verdicts of the version waiting for approval",
    )
    answer: Approval = pause_flow_run(wait_for_input=Approval, timeout=timeout_s)
    return answer


def _refused(uri: str, result: DeployResult, reason: str, by: str) -> DeployResult:
    """Record why the version was not promoted; the champion stays as it was."""
    promotion.record(uri, result.dataset, result.version, {"action": "deploy refused", "reason": reason, "by": by})
    get_run_logger().warning("v%s not promoted: %s", result.version, reason)
    try:
        champion = seal.champion_of(load_settings(), result.dataset)
    except seal.SealError:
        champion = None
    return result.model_copy(update={"reason": reason, "champion": champion})


def _promoted(uri: str, result: DeployResult, moved: policy.Promotion, strategy: str, by: str) -> DeployResult:
    """Record the promotion in the version's history and announce it (the model triggers listen)."""
    name, version = result.dataset, result.version
    entry = {
        "action": "promoted",
        "previous": moved.previous,
        "by": by,
        "bundle": result.bundle_uri,
        "infra": result.infra.model_dump(),
        "strategy": strategy,
        "rollout": result.rollout.model_dump() if result.rollout else None,
    }
    promotion.record(uri, name, version, entry)
    event = emit_event(
        event=events.PROMOTED,
        resource=events.model_resource(name),
        payload={"version": version, "previous": moved.previous, "bundle": result.bundle_uri},
    )
    get_run_logger().info("%s v%s is champion (previous: %s)", name, version, moved.previous)
    return result.model_copy(
        update={
            "promoted": True,
            "champion": moved.champion,
            "previous": moved.previous,
            "reason": "promoted",
            "event_id": str(event.id) if event else None,
        }
    )
