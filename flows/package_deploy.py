"""The package/deploy flow: eligible version -> bundle -> infra validation -> (approval) -> atomic promotion."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, pause_flow_run, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.input import RunInput
from pydantic import BaseModel, Field

from closedloop import events
from closedloop.contract import contract_at
from closedloop.settings import Profile, load_settings
from tasks.promote import promotion


class DeployParams(BaseModel):
    """What to deploy; Prefect renders this as the run form in the UI."""

    contract: str | None = Field(default=None, description="contract file; empty: CLOSEDLOOP_CONTRACT")
    version: str | None = Field(default=None, description="registered version; empty: the challenger")
    require_approval: bool | None = Field(
        default=None, description="pause for a human decision in the UI; empty: on in production, off locally"
    )
    approval_timeout_s: int = Field(default=24 * 3600, ge=10)
    latency_budget_ms: float = Field(default=50.0, gt=0, description="single-request scoring latency budget")
    strategy: Literal["direct", "shadow", "canary"] = Field(
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
    infra: dict[str, Any]
    approval: dict[str, Any] | None
    reason: str
    event_id: str | None = None
    rollout: dict[str, Any] | None = None


@task(name="infra_validation", cache_policy=NO_CACHE)
def infra_validation(
    tracking_uri: str, name: str, version: str, contract_path: str, budget_ms: float
) -> dict[str, Any]:
    settings = load_settings()
    return promotion.validate_infra(
        tracking_uri, name, version, contract_path, settings.server_environment(), budget_ms
    )


@task(name="package_scorer", cache_policy=NO_CACHE)
def package_scorer(tracking_uri: str, name: str, version: str, contract_path: str) -> str:
    """The version's deployable pyfunc (raw application fields in, features fetched itself); returns its URI."""
    from tasks.promote.bundle import log_scorer

    return log_scorer(tracking_uri, name, version, contract_path)


@task(name="write_bundle", cache_policy=NO_CACHE)
def write_bundle(tracking_uri: str, name: str, version: str, contract_path: str) -> dict[str, Any]:
    settings = load_settings()
    return promotion.write_bundle(
        tracking_uri,
        name,
        version,
        contract_at(contract_path),
        contract_path,
        settings.bundles_uri,
        settings.s3_endpoint_url,
    )


@flow(name="package_deploy")
def package_deploy(params: DeployParams | None = None) -> DeployResult:
    """Deploy an eligible version: bundle it, validate it in a fresh interpreter, ask, then promote it atomically."""
    params = params or DeployParams()
    logger = get_run_logger()
    settings = load_settings()
    contract_path = str(params.contract or settings.contract)
    contract = contract_at(contract_path)
    uri, name = settings.mlflow_tracking_uri, contract.name
    version, evidence = promotion.resolve_candidate(uri, name, params.version)
    compared_with = evidence.get("gates", {}).get("champion", {}).get("compared_with")
    started_by = f"event:{params.trigger_event_id}" if params.trigger_event_id else f"flow run {runtime.flow_run.id}"

    def refused(
        reason: str, infra: dict[str, Any], bundle: str | None, approval: dict[str, Any] | None
    ) -> DeployResult:
        promotion.record(uri, name, version, {"action": "deploy refused", "reason": reason, "by": started_by})
        logger.warning("v%s not promoted: %s", version, reason)
        return DeployResult(
            dataset=name,
            version=version,
            promoted=False,
            champion=promotion.champion_version(uri, name),
            previous=None,
            bundle_uri=bundle,
            infra=infra,
            approval=approval,
            reason=reason,
        )

    scorer_uri = package_scorer(uri, name, version, contract_path)
    logger.info("v%s packaged as %s", version, scorer_uri)
    bundle = write_bundle(uri, name, version, contract_path)
    infra = infra_validation(uri, name, version, contract_path, params.latency_budget_ms)
    if infra["verdict"] != "pass":
        return refused("infra validation failed: " + "; ".join(infra["problems"]), infra, bundle["uri"], None)
    approval: dict[str, Any] | None = None
    needs_approval = (
        params.require_approval if params.require_approval is not None else settings.profile is Profile.PRODUCTION
    )
    if needs_approval:
        card = promotion._download(uri, name, version, "evidence/model_card.md").read_text()
        create_markdown_artifact(
            key=f"approve-{name.replace('_', '-')}-v{version}",
            markdown=f"# Approve {name} v{version}?\n\nInfra validation: {infra}\n\n{card}",
            description="model card and gate verdicts of the version waiting for approval",
        )
        answer = pause_flow_run(wait_for_input=Approval, timeout=params.approval_timeout_s)
        approval = {"approve": answer.approve, "reviewer": answer.reviewer, "comment": answer.comment}
        promotion.record(uri, name, version, {"action": "approval", **approval})
        if not answer.approve:
            return refused(f"not approved by {answer.reviewer}: {answer.comment}", infra, bundle["uri"], approval)
    rollout: dict[str, Any] | None = None
    if params.strategy != "direct":
        rollout = observe_rollout(uri, name, version, params, started_by)
        if rollout["verdict"] != "passed":
            why = f"{params.strategy} rollout {rollout['verdict']}: {rollout['reason']}"
            return refused(why, infra, bundle["uri"], approval).model_copy(update={"rollout": rollout})
    try:
        moved = promotion.promote(uri, name, version, compared_with)
    except promotion.DeployError as exc:
        return refused(str(exc), infra, bundle["uri"], approval)
    promotion.record(
        uri,
        name,
        version,
        {
            "action": "promoted",
            "previous": moved["previous"],
            "by": started_by,
            "bundle": bundle["uri"],
            "infra": infra,
            "strategy": params.strategy,
            "rollout": rollout,
        },
    )
    event = emit_event(
        event=events.PROMOTED,
        resource=events.model_resource(name),
        payload={"version": version, "previous": moved["previous"], "bundle": bundle["uri"]},
    )
    logger.info("%s v%s is champion (previous: %s)", name, version, moved["previous"])
    return DeployResult(
        dataset=name,
        version=version,
        promoted=True,
        champion=version,
        previous=moved["previous"],
        bundle_uri=bundle["uri"],
        infra=infra,
        approval=approval,
        reason="promoted",
        event_id=str(event.id) if event else None,
        rollout=rollout,
    )


@task(name="observe_rollout", cache_policy=NO_CACHE)
def observe_rollout(tracking_uri: str, name: str, version: str, params: DeployParams, by: str) -> dict[str, Any]:
    """Shadow or canary on live traffic, judged by the services' guards and the inference log."""
    from closedloop.lake import Lake

    settings = load_settings()
    plan = {
        "strategy": params.strategy,
        "share": params.canary_share if params.strategy == "canary" else 0.0,
        "max_error_rate": params.max_error_rate,
        "max_p99_ms": params.max_p99_ms,
        "min_requests": params.min_requests,
    }
    lake = Lake.of(settings.lake_uri, name, settings.s3_endpoint_url)
    return promotion.observe_rollout(tracking_uri, name, version, plan, params.observe_seconds, lake, by)
