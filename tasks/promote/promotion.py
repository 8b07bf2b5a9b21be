"""Package, check and promote a registered model version; roll back.

- **Golden records**: at registration, 50 test rows and the model's scores on them are kept with the version
  (``evidence/golden.json``); infra validation scores them again in a fresh interpreter from the registry URI.
- **Bundle**: model, contract, FeatureService definition, model card and evidence written together to object
  storage (a local folder, or ``s3://`` through boto3 in production), with a manifest of SHA-256 digests.
- **Promotion** is a compare-and-set on the registry aliases: ``champion`` moves only if it still points at the
  version the challenger was compared with; the old champion becomes ``previous``. Deploy runs are serialised by
  the deployment's concurrency limit, so no two promotions race between the check and the move.
- Every deploy, approval and rollback is appended to ``evidence/deployments.json`` of the versions involved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from closedloop import storage
from closedloop.contract import Contract
from closedloop.registry import CHALLENGER, CHAMPION, champion_version, client, read_evidence

__all__ = ["champion_version"]  # re-exported for the deploy flow

logger = logging.getLogger(__name__)

PREVIOUS = "previous"
GOLDEN_ROWS = 50
TOLERANCE = 1e-6


class DeployError(RuntimeError):
    """A deployment step refused to go on; the message says why. Nothing was promoted."""


class PromotionConflict(DeployError):
    """The champion moved since the challenger was evaluated: re-evaluate against the new champion."""


def _download(tracking_uri: str, name: str, version: str, path: str) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run_id = client(tracking_uri).get_model_version(name, version).run_id
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def golden(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """The golden records of a version: feature rows and the scores the model gave them at training time."""
    try:
        record: dict[str, Any] = json.loads(_download(tracking_uri, name, version, "evidence/golden.json").read_text())
    except Exception as exc:
        raise DeployError(
            f"{name} v{version} has no golden records (registered before they were kept?): {exc}"
        ) from exc
    return record


def validate_infra(
    tracking_uri: str, name: str, version: str, contract_path: str, env: dict[str, str], latency_budget_ms: float
) -> dict[str, Any]:
    """Load the version in a fresh interpreter from its registry URI, re-score the golden records, time one request.

    Fails closed: any difference above 1e-6, a load failure or a latency over budget raises :class:`DeployError`.
    """
    command = [sys.executable, "-m", "tasks.promote.infra_check", tracking_uri, name, version, contract_path]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)  # noqa: S603
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"infra validation of {name} v{version} did not finish in 300 s") from exc
    if done.returncode != 0:
        raise DeployError(f"infra validation of {name} v{version} failed to run: {done.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    report["latency_budget_ms"] = latency_budget_ms
    problems = []
    if report["max_abs_difference"] > TOLERANCE:
        problems.append(
            f"golden records scored differently: max |difference| {report['max_abs_difference']:.3g} > {TOLERANCE}"
        )
    if report["latency_p50_ms"] > latency_budget_ms:
        problems.append(
            f"single-request latency {report['latency_p50_ms']:.1f} ms over the {latency_budget_ms} ms budget"
        )
    report["verdict"] = "fail" if problems else "pass"
    report["problems"] = problems
    return report


def write_bundle(
    tracking_uri: str,
    name: str,
    version: str,
    contract: Contract,
    contract_path: str,
    bundles_uri: str,
    endpoint: str | None,
) -> dict[str, Any]:
    """Model, scorer package, contract, FeatureService, model card and evidence together, with a digest manifest."""
    from feature_repo.definitions import build_repo

    base = storage.join(bundles_uri, name, f"v{version}")
    model_dir = _download(tracking_uri, name, version, "")  # the whole run: model/ and evidence/
    files: dict[str, bytes] = {"contract.yaml": Path(contract_path).read_bytes()}
    service = build_repo(contract, "offline").model_service
    files["feature_service.json"] = json.dumps(
        {
            "name": service.name,
            "features": [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features],
        },
        indent=2,
    ).encode()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(model_dir))] = path.read_bytes()
    # the registered model and its deployable package live beside the run in MLflow 3 (logged models)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    packages = {"model": f"models:/{name}/{version}"}
    scorer = (client(tracking_uri).get_model_version(name, version).tags or {}).get("scorer_uri")
    if scorer:
        packages["scorer"] = scorer
    for prefix, uri in packages.items():
        folder = Path(mlflow.artifacts.download_artifacts(uri))
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                files[f"{prefix}/{path.relative_to(folder)}"] = path.read_bytes()
    manifest = {
        "model": name,
        "version": version,
        "contract_fingerprint": contract.fingerprint,
        "written_at": datetime.now(UTC).isoformat(),
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())},
    }
    for relative, data in files.items():
        storage.write_bytes(storage.join(base, relative), data, endpoint)
    storage.write_bytes(storage.join(base, "MANIFEST.json"), json.dumps(manifest, indent=2).encode(), endpoint)
    return {"uri": base, "files": len(files)}


def record(tracking_uri: str, name: str, version: str, entry: dict[str, Any]) -> None:
    """Append one entry to the version's deployment history (``evidence/deployments.json``)."""
    c = client(tracking_uri)
    run_id = c.get_model_version(name, version).run_id
    try:
        history = json.loads(_download(tracking_uri, name, version, "evidence/deployments.json").read_text())
    except Exception:
        history = []
    history.append({"at": datetime.now(UTC).isoformat(), **entry})
    c.log_text(run_id, json.dumps(history, indent=2, default=str), "evidence/deployments.json")


def history(tracking_uri: str, name: str, version: str) -> list[dict[str, Any]]:
    try:
        entries: list[dict[str, Any]] = json.loads(
            _download(tracking_uri, name, version, "evidence/deployments.json").read_text()
        )
        return entries
    except Exception:
        return []


def resolve_candidate(tracking_uri: str, name: str, version: str | None) -> tuple[str, dict[str, Any]]:
    """The version to deploy (default: the challenger) and its evidence; refuses one that is not eligible."""
    c = client(tracking_uri)
    if version is None:
        try:
            version = str(c.get_model_version_by_alias(name, CHALLENGER).version)
        except Exception as exc:
            raise DeployError(f"{name} has no challenger: train an eligible model first ({exc})") from exc
    evidence = read_evidence(tracking_uri, name, version)
    if not evidence.get("eligible"):
        failed = {k: v["verdict"] for k, v in evidence.get("gates", {}).items() if v.get("verdict") != "pass"}
        raise DeployError(f"{name} v{version} is not eligible for promotion (gates: {failed})")
    return version, evidence


def promote(tracking_uri: str, name: str, version: str, compared_with: str | None) -> dict[str, Any]:
    """Compare-and-set: champion := version only if the champion is still ``compared_with``."""
    current = champion_version(tracking_uri, name)
    if current == version:
        raise DeployError(f"{name} v{version} is already the champion")
    if current != compared_with:
        raise PromotionConflict(
            f"the champion of {name} is v{current}, but v{version} was compared with "
            f"{'v' + compared_with if compared_with else 'no champion'}: re-evaluate it against v{current}"
        )
    c = client(tracking_uri)
    if current is not None:
        c.set_registered_model_alias(name, PREVIOUS, current)
    c.set_registered_model_alias(name, CHAMPION, version)
    with contextlib.suppress(Exception):  # the challenger alias goes only if it named this version
        if str(c.get_model_version_by_alias(name, CHALLENGER).version) == version:
            c.delete_registered_model_alias(name, CHALLENGER)
    return {"champion": version, "previous": current}


def rollback(tracking_uri: str, name: str, reason: str, by: str) -> dict[str, Any]:
    """Champion := previous (and previous := the rolled-back version), recorded in both versions' history."""
    c = client(tracking_uri)
    current = champion_version(tracking_uri, name)
    try:
        previous = str(c.get_model_version_by_alias(name, PREVIOUS).version)
    except Exception as exc:
        raise DeployError(f"{name} has no previous champion to roll back to") from exc
    if current is None:
        raise DeployError(f"{name} has no champion to roll back")
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_registered_model_alias(name, PREVIOUS, current)
    entry = {"action": "rollback", "from": current, "to": previous, "reason": reason, "by": by}
    record(tracking_uri, name, current, entry)
    record(tracking_uri, name, previous, entry)
    return {"champion": previous, "rolled_back": current}


# --- shadow and canary rollouts -------------------------------------------------------------------------------
# A rollout is the ``candidate`` alias on a version plus ``rollout.*`` tags on that version (strategy, share,
# budgets, verdict). Every scoring service watching the registry routes to it (canary: a sticky share of entities
# by hash; shadow: scores every request, answer not returned), guards it against its error and latency budgets and
# ends it itself on a breach; the deploy flow watches the verdict and promotes only after a clean observation.
CANDIDATE = "candidate"
STRATEGIES = ("direct", "shadow", "canary")


def start_rollout(tracking_uri: str, name: str, version: str, plan: dict[str, Any]) -> None:
    """Put ``version`` on the candidate alias with its rollout plan (strategy, share, budgets)."""
    c = client(tracking_uri)
    try:
        current = str(c.get_model_version_by_alias(name, CANDIDATE).version)
    except Exception:
        current = None
    if current is not None and current != version:
        raise DeployError(f"{name} v{current} is already being rolled out: end that rollout first")
    for key, value in {**plan, "verdict": "running"}.items():
        c.set_model_version_tag(name, version, f"rollout.{key}", str(value))
    c.set_registered_model_alias(name, CANDIDATE, version)


def aliases(tracking_uri: str, name: str) -> dict[str, str]:
    """Every alias of the registered model (alias -> version) in one call; empty when the model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return {}
        raise
    return {str(k): str(v) for k, v in (found.aliases or {}).items()}


def rollout_state(tracking_uri: str, name: str, known: dict[str, str] | None = None) -> dict[str, str] | None:
    """The running rollout: ``version`` and its ``rollout.*`` tags, or None when no version is a candidate.

    ``known``: the model's aliases if the caller has just read them (saves a registry call).
    """
    version = (aliases(tracking_uri, name) if known is None else known).get(CANDIDATE)
    if version is None:
        return None
    found = client(tracking_uri).get_model_version(name, version)
    tags = {k.removeprefix("rollout."): v for k, v in (found.tags or {}).items() if k.startswith("rollout.")}
    return {"version": version, **tags}


def end_rollout(tracking_uri: str, name: str, version: str, verdict: str, entry: dict[str, Any]) -> bool:
    """Take ``version`` off the candidate alias (if it is still there), tag the verdict, record it.

    Returns whether this call ended it: two services seeing the same breach record it once between them (the
    alias check is not atomic across processes, so a duplicate history entry is possible but harmless).
    """
    c = client(tracking_uri)
    state = rollout_state(tracking_uri, name)
    if state is None or state["version"] != version or state.get("verdict") != "running":
        return False
    c.set_model_version_tag(name, version, "rollout.verdict", verdict)
    record(tracking_uri, name, version, {"action": f"rollout {verdict}", **entry})  # before the alias goes:
    with contextlib.suppress(Exception):  # whoever sees the alias gone finds the reason recorded
        c.delete_registered_model_alias(name, CANDIDATE)
    return True


ROLLOUT_POLL_SECONDS = 2.0
LOG_FLUSH_GRACE_SECONDS = 6.0  # the scoring service flushes its inference log every 5 s


def observe_rollout(
    tracking_uri: str, name: str, version: str, plan: dict[str, Any], observe_seconds: float, lake: Any, by: str
) -> dict[str, Any]:
    """Put the version in shadow or canary, watch it, and judge it on what the inference log recorded.

    The scoring services end the rollout themselves on a breach of the error or latency budget (their verdict is
    read here); after ``observe_seconds`` the candidate passes only with ``min_requests`` answers logged and a
    p99 latency within budget. Fails closed: too little traffic is a failed rollout, not a pass.
    """
    import numpy as np

    from closedloop.inference_log import read_window

    plan = {**plan, "champion": champion_version(tracking_uri, name)}
    strategy, min_requests, max_p99_ms = plan["strategy"], int(plan["min_requests"]), float(plan["max_p99_ms"])
    started = datetime.now(UTC)
    start_rollout(tracking_uri, name, version, plan)
    record(tracking_uri, name, version, {"action": f"{strategy} rollout started", "by": by, **plan})
    logger.info("v%s in %s rollout for %s s: %s", version, strategy, observe_seconds, plan)
    deadline = time.monotonic() + observe_seconds
    while time.monotonic() < deadline:
        state = rollout_state(tracking_uri, name)
        if state is None or state["version"] != version or state.get("verdict") != "running":
            entries = history(tracking_uri, name, version)
            ended: dict[str, Any] = next((e for e in reversed(entries) if e.get("action") == "rollout rolled back"), {})
            reason = ended.get("reason", "ended outside this run")
            logger.warning("v%s rolled back during its %s rollout: %s", version, strategy, reason)
            return {**plan, "verdict": "rolled back", "reason": reason, "requests": ended.get("requests")}
        time.sleep(min(ROLLOUT_POLL_SECONDS, max(deadline - time.monotonic(), 0)))
    time.sleep(LOG_FLUSH_GRACE_SECONDS)
    logged = read_window(lake, started, datetime.now(UTC))
    mine = logged[(logged["model_version"] == version) & (logged["variant"] == strategy)]
    stats: dict[str, Any] = {"requests": len(mine)}
    if len(mine):
        stats["p99_ms"] = round(float(np.percentile(mine["latency_ms"], 99)), 3)
    if strategy == "shadow" and len(mine):
        twins = logged[logged["variant"] == "champion"].set_index("request_id")
        paired = mine.join(twins[["score", "decision"]], on="request_id", rsuffix="_champion", how="inner")
        if len(paired):
            stats["paired_with_champion"] = len(paired)
            difference = (paired["score"] - paired["score_champion"]).abs().mean()
            stats["mean_abs_score_difference"] = round(float(difference), 6)
            agreement = (paired["decision"] == paired["decision_champion"]).mean()
            stats["decision_agreement"] = round(float(agreement), 4)
    if len(mine) < min_requests:
        verdict = "failed"
        reason = f"only {len(mine)} answers logged in {observe_seconds} s (needs {min_requests})"
    elif stats["p99_ms"] > max_p99_ms:
        verdict, reason = "failed", f"p99 latency {stats['p99_ms']} ms over budget {max_p99_ms} ms"
    else:
        verdict, reason = "passed", f"{len(mine)} answers within budget"
    if not end_rollout(tracking_uri, name, version, verdict, {"by": by, "reason": reason, **stats}):
        state = rollout_state(tracking_uri, name)
        if state is None or state["version"] != version:
            verdict, reason = "rolled back", "ended by a scoring service as the window closed"
    logger.info("%s rollout of v%s %s: %s %s", strategy, version, verdict, reason, stats)
    return {**plan, **stats, "verdict": verdict, "reason": reason}
