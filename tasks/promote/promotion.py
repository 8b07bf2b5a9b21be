"""Promote a registered version, roll it back, and run its shadow or canary rollout: the registry side.

- **Promotion** is a compare-and-set on the registry aliases: ``champion`` moves only if it still points at the
  version the challenger was compared with; the old champion becomes ``previous``. Deploy runs are serialised by
  the deployment's concurrency limit, so no two promotions race between the check and the move.
- **Rollouts**: the ``candidate`` alias on a version plus ``rollout.*`` tags on that version (strategy, share,
  budgets, verdict). Every scoring service watching the registry routes to it (canary: a sticky share of entities
  by hash; shadow: scores every request, answer not returned), guards it against its error and latency budgets and
  ends it itself on a breach; the deploy flow watches the verdict and promotes only after a clean observation.
- Every deploy, approval, rollout and rollback is appended to ``evidence/deployments.json`` of the versions involved.
- **Seals** (``closedloop/seal.py``): each promotion, rollback and rollout start is signed with the flows' key, and
  a version's evidence is trusted only when it matches the seal the train flow wrote: the aliases are a view for
  people, the seals are what the scoring services and the flows act on.

The rules (eligibility, compare-and-set, rollout verdicts) are in ``policy.py``; this module reads and moves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from closedloop import seal
from closedloop.inference_log import read_window
from closedloop.lake import Lake
from closedloop.registry import CHALLENGER, CHAMPION, PREVIOUS, client, evidence_file
from tasks.promote import policy
from tasks.promote.policy import DeployError

logger = logging.getLogger(__name__)

CANDIDATE = "candidate"  # the alias of a version in shadow or canary

ROLLOUT_POLL_SECONDS = 2.0
LOG_FLUSH_GRACE_SECONDS = 6.0  # the scoring service flushes its inference log every 5 s


def run_artifact(tracking_uri: str, name: str, version: str, path: str) -> Path:
    """A local copy of an artifact of the version's run (``""``: the whole run)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    run_id = client(tracking_uri).get_model_version(name, version).run_id
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def golden(tracking_uri: str, name: str, version: str) -> dict[str, Any]:
    """The golden records of a version: feature rows and the scores the model gave them at training time."""
    try:
        record: dict[str, Any] = json.loads(
            run_artifact(tracking_uri, name, version, "evidence/golden.json").read_text()
        )
    except Exception as exc:
        raise DeployError(
            f"{name} v{version} has no golden records (registered before they were kept?): {exc}"
        ) from exc
    return record


def model_card(tracking_uri: str, name: str, version: str) -> str:
    """The version's model card (markdown), shown to whoever approves it."""
    return run_artifact(tracking_uri, name, version, "evidence/model_card.md").read_text()


def record(tracking_uri: str, name: str, version: str, entry: dict[str, Any]) -> None:
    """Append one entry to the version's deployment history (``evidence/deployments.json``)."""
    c = client(tracking_uri)
    run_id = c.get_model_version(name, version).run_id
    entries = history(tracking_uri, name, version)
    entries.append({"at": datetime.now(UTC).isoformat(), **entry})
    c.log_text(run_id, json.dumps(entries, indent=2, default=str), "evidence/deployments.json")


def history(tracking_uri: str, name: str, version: str) -> list[dict[str, Any]]:
    """The version's deployment history, oldest first (empty when it was never deployed)."""
    try:
        entries: list[dict[str, Any]] = json.loads(
            run_artifact(tracking_uri, name, version, "evidence/deployments.json").read_text()
        )
        return entries
    except Exception:
        return []


def _alias(tracking_uri: str, name: str, alias: str) -> str | None:
    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def resolve_candidate(tracking_uri: str, name: str, version: str | None, keys: seal.KeyFiles) -> policy.Candidate:
    """The version to deploy (default: the challenger); refuses one whose sealed evidence is not eligible."""
    if version is None:
        try:
            version = str(client(tracking_uri).get_model_version_by_alias(name, CHALLENGER).version)
        except Exception as exc:
            raise DeployError(f"{name} has no challenger: train an eligible model first ({exc})") from exc
    return policy.eligible_candidate(name, version, sealed_evidence(tracking_uri, name, version, keys))


def sealed_evidence(tracking_uri: str, name: str, version: str, keys: seal.KeyFiles) -> dict[str, Any]:
    """The version's evidence record, only if it is the one the train flow sealed (not rewritten since)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(tracking_uri).get_model_version(name, version)
    except MlflowException as exc:
        raise DeployError(f"{name} has no version {version}: {exc.message}") from exc
    try:
        payload = seal.opened(seal.verify_key(keys), (found.tags or {}).get(seal.EVIDENCE_TAG), f"{name} v{version}")
        text = evidence_file(tracking_uri, name, version, "evidence.json").read_bytes()
    except (seal.SealError, OSError) as exc:
        raise DeployError(f"{name} v{version}: its evidence cannot be trusted: {exc}") from exc
    if (payload.get("dataset"), str(payload.get("version")), payload.get("run_id")) != (name, version, found.run_id):
        raise DeployError(f"{name} v{version}: its evidence seal names another version ({payload})")
    if payload.get("sha256") != seal.digest(text):
        raise DeployError(
            f"{name} v{version}: evidence/evidence.json differs from the record the train flow sealed "
            "(changed after training): it is not deployed"
        )
    record_: dict[str, Any] = json.loads(text)
    return record_


def sealed_champion(tracking_uri: str, name: str, keys: seal.KeyFiles) -> dict[str, Any] | None:
    """The last sealed promotion (None: none yet); :class:`DeployError` when the registry's seal is forged."""
    try:
        return seal.sealed_champion(keys, name, seal.registered(tracking_uri, name)[1])
    except seal.SealError as exc:
        raise DeployError(
            f"{exc}; nothing is promoted while it stands (delete the registered model's tag {seal.CHAMPION_TAG} "
            "to start over)"
        ) from exc


def promote(
    tracking_uri: str,
    name: str,
    version: str,
    compared_with: str | None,
    keys: seal.KeyFiles,
    by: str,
    approval: dict[str, Any] | None = None,
) -> policy.Promotion:
    """Compare-and-set against the sealed champion: champion := version only if it is still ``compared_with``.

    The promotion is sealed (signed with the flows' key) before the aliases move: the seal is what the scoring
    services serve, the aliases are the registry's view of it.
    """
    current = sealed_champion(tracking_uri, name, keys)
    moved = policy.plan_promotion(name, version, None if current is None else str(current["version"]), compared_with)
    c = client(tracking_uri)
    payload = {
        "kind": "champion",
        "action": "promoted",
        "dataset": name,
        "version": version,
        "run_id": c.get_model_version(name, version).run_id,
        "seq": 1 if current is None else int(current["seq"]) + 1,
        "previous": None if current is None else {k: current[k] for k in ("version", "run_id")},
        "by": by,
        "approval": approval,
        "at": seal.now(),
    }
    c.set_registered_model_tag(name, seal.CHAMPION_TAG, seal.sign(seal.signing_key(keys), payload))
    if moved.previous is not None:
        c.set_registered_model_alias(name, PREVIOUS, moved.previous)
    c.set_registered_model_alias(name, CHAMPION, version)
    if _alias(tracking_uri, name, CHALLENGER) == version:  # the challenger alias goes only if it named this version
        with contextlib.suppress(Exception):
            c.delete_registered_model_alias(name, CHALLENGER)
    return moved


def rollback(tracking_uri: str, name: str, reason: str, by: str, keys: seal.KeyFiles) -> policy.Rollback:
    """Champion := the previous sealed champion (sealed again), recorded in both versions' history.

    The previous version comes from the seal, not the ``previous`` alias, which anyone could have moved.
    """
    current = sealed_champion(tracking_uri, name, keys) or {}
    before: dict[str, Any] = current.get("previous") or {}
    moved = policy.plan_rollback(name, current.get("version"), before.get("version"))
    payload = {
        "kind": "champion",
        "action": "rolled back",
        "dataset": name,
        "version": moved.champion,
        "run_id": before["run_id"],
        "seq": int(current["seq"]) + 1,
        "previous": {k: current[k] for k in ("version", "run_id")},
        "by": by,
        "reason": reason,
        "at": seal.now(),
    }
    c = client(tracking_uri)
    c.set_registered_model_tag(name, seal.CHAMPION_TAG, seal.sign(seal.signing_key(keys), payload))
    c.set_registered_model_alias(name, CHAMPION, moved.champion)
    c.set_registered_model_alias(name, PREVIOUS, moved.rolled_back)
    entry = {"action": "rollback", "from": moved.rolled_back, "to": moved.champion, "reason": reason, "by": by}
    record(tracking_uri, name, moved.rolled_back, entry)
    record(tracking_uri, name, moved.champion, entry)
    return moved


# --- shadow and canary rollouts -------------------------------------------------------------------------------


def start_rollout(tracking_uri: str, name: str, version: str, plan: policy.RolloutPlan, keys: seal.KeyFiles) -> None:
    """Put ``version`` on the candidate alias with its rollout plan (strategy, share, budgets), sealed.

    The scoring services route to a candidate only when the registered model's candidate seal names it, and take
    the plan from the seal: a hand-set alias or rollout tag puts no version in front of traffic.
    """
    policy.check_no_other_rollout(name, _alias(tracking_uri, name, CANDIDATE), version)
    c = client(tracking_uri)
    payload = {
        "kind": "candidate",
        "dataset": name,
        "version": version,
        "run_id": c.get_model_version(name, version).run_id,
        "plan": plan.model_dump(),
        "at": seal.now(),
    }
    c.set_registered_model_tag(name, seal.CANDIDATE_TAG, seal.sign(seal.signing_key(keys), payload))
    for key, value in plan.tags().items():
        c.set_model_version_tag(name, version, key, value)
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
    if not policy.rollout_running(rollout_state(tracking_uri, name), version):
        return False
    c = client(tracking_uri)
    c.set_model_version_tag(name, version, "rollout.verdict", verdict)
    record(tracking_uri, name, version, {"action": f"rollout {verdict}", **entry})  # before the alias goes:
    with contextlib.suppress(Exception):  # whoever sees the alias gone finds the reason recorded
        c.delete_registered_model_alias(name, CANDIDATE)
    return True


def observe_rollout(
    tracking_uri: str,
    name: str,
    version: str,
    plan: policy.RolloutPlan,
    observe_seconds: float,
    lake: Lake,
    by: str,
    keys: seal.KeyFiles,
) -> policy.RolloutOutcome:
    """Put the version in shadow or canary, watch it, and judge it on what the inference log recorded.

    The scoring services end the rollout themselves on a breach of the error or latency budget (their verdict is
    read here); after ``observe_seconds`` the candidate passes only with ``min_requests`` answers logged and a
    p99 latency within budget. Fails closed: too little traffic is a failed rollout, not a pass.
    """
    current = sealed_champion(tracking_uri, name, keys)
    plan = plan.model_copy(update={"champion": None if current is None else str(current["version"])})
    started = datetime.now(UTC)
    start_rollout(tracking_uri, name, version, plan, keys)
    record(tracking_uri, name, version, {"action": f"{plan.strategy} rollout started", "by": by, **plan.model_dump()})
    logger.info("v%s in %s rollout for %s s: %s", version, plan.strategy, observe_seconds, plan.model_dump())
    if not _watch(tracking_uri, name, version, observe_seconds):
        outcome = policy.rolled_back(plan, history(tracking_uri, name, version))
        logger.warning("v%s rolled back during its %s rollout: %s", version, plan.strategy, outcome.reason)
        return outcome
    time.sleep(LOG_FLUSH_GRACE_SECONDS)
    logged = read_window(lake, started, datetime.now(UTC))
    stats = policy.rollout_stats(logged, version, plan.strategy)
    outcome = policy.judge_rollout(plan, stats, observe_seconds)
    entry = {"by": by, "reason": outcome.reason, **stats.model_dump()}
    if not end_rollout(tracking_uri, name, version, outcome.verdict, entry):
        state = rollout_state(tracking_uri, name)
        if state is None or state["version"] != version:
            reason = "ended by a scoring service as the window closed"
            outcome = outcome.model_copy(update={"verdict": "rolled back", "reason": reason})
    logger.info(
        "%s rollout of v%s %s: %s %s", plan.strategy, version, outcome.verdict, outcome.reason, stats.model_dump()
    )
    return outcome


def _watch(tracking_uri: str, name: str, version: str, observe_seconds: float) -> bool:
    """Wait out the observation; False as soon as the rollout is no longer running (a service ended it)."""
    deadline = time.monotonic() + observe_seconds
    while time.monotonic() < deadline:
        if not policy.rollout_running(rollout_state(tracking_uri, name), version):
            return False
        time.sleep(min(ROLLOUT_POLL_SECONDS, max(deadline - time.monotonic(), 0)))
    return True
