"""The promotion stage's Prefect tasks: package the scorer, write the bundle, validate the infra, observe a rollout."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from closedloop import seal
from closedloop.contract import Contract
from closedloop.lake import Lake
from closedloop.settings import Settings
from tasks.promote import infra_check, packaging, policy, promotion


@task(name="package_scorer", cache_policy=NO_CACHE)
def package_scorer(settings: Settings, contract: Contract, contract_file: str, version: str) -> str:
    """The version's deployable pyfunc (raw application fields in, features fetched itself); returns its URI."""
    return packaging.log_scorer(settings.mlflow_tracking_uri, contract, contract_file, version)


@task(name="write_bundle", cache_policy=NO_CACHE)
def write_bundle(settings: Settings, contract: Contract, contract_file: str, version: str) -> packaging.BundleWritten:
    """Everything the version needs to run, written together to the bundles store with a digest manifest."""
    return packaging.write_bundle(
        settings.mlflow_tracking_uri, contract, contract_file, version, settings.bundles_uri, settings.s3_endpoint_url
    )


@task(name="infra_validation", cache_policy=NO_CACHE)
def infra_validation(settings: Settings, contract: Contract, version: str, budget_ms: float) -> policy.InfraReport:
    """The packaged scorer loaded in a fresh interpreter: golden records re-scored, one request timed."""
    return infra_check.validate_infra(
        settings.mlflow_tracking_uri, contract.name, version, settings.server_environment(), budget_ms
    )


@task(name="observe_rollout", cache_policy=NO_CACHE)
def observe_rollout(
    settings: Settings, contract: Contract, version: str, plan: policy.RolloutPlan, observe_seconds: float, by: str
) -> policy.RolloutOutcome:
    """Shadow or canary on live traffic, judged by the services' guards and the inference log."""
    lake = Lake.of(settings.lake_uri, contract.name, settings.s3_endpoint_url)
    return promotion.observe_rollout(
        settings.mlflow_tracking_uri, contract.name, version, plan, observe_seconds, lake, by, seal.key_files(settings)
    )
