"""Runs whose process died: found by the process recorded on them, and marked as crashed.

A flow called in a command's own process (``closedloop ingest``, ``train``, ...) reports its states to the Prefect
server from that process; killed with ``kill -9``, it never reports again, and its Prefect flow and task runs and
its MLflow run stay Running. So every run such a process starts records it (:class:`~closedloop.processes.Owner`):
a Prefect tag ``closedloop.process:<host>:<pid>:<start>`` and an MLflow tag ``closedloop.process``. The next
command sweeps: a run still Running whose recorded process is gone from this host is set Crashed (Prefect) or
KILLED (MLflow), with a message naming the process. Runs of other hosts are left to a sweep there.

Both servers are asked over their REST APIs with a short timeout: the sweep never holds a command up for long,
and a server that does not answer is swept next time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from closedloop.processes import Owner

logger = logging.getLogger(__name__)

TAG = "closedloop.process"  # Prefect: this tag and "<TAG>:<owner>"; MLflow: the tag key, the owner its value
NOTE_TAG = "closedloop.crashed"  # MLflow: why the sweep ended the run
UNFINISHED = ["RUNNING", "PENDING"]
TIMEOUT_S = 5.0


def prefect_tags(owner: Owner) -> list[str]:
    """The tags a Prefect run started by ``owner`` carries (the bare one lets the sweep filter on the server)."""
    return [TAG, f"{TAG}:{owner.label}"]


@contextmanager
def owned_runs(owner: Owner | None = None) -> Iterator[None]:
    """Record ``owner`` (this process) on every Prefect and MLflow run started inside the block."""
    from prefect import tags

    owner = owner or Owner.current()
    before = os.environ.get("MLFLOW_RUN_CONTEXT")
    # MLflow adds the tags of this variable to every run it starts (its system-environment run context)
    os.environ["MLFLOW_RUN_CONTEXT"] = json.dumps({**json.loads(before or "{}"), TAG: owner.label})
    try:
        with tags(*prefect_tags(owner)):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_RUN_CONTEXT", None)
        else:
            os.environ["MLFLOW_RUN_CONTEXT"] = before


def _message(owner: Owner) -> str:
    return f"process {owner.pid} on {owner.host} that ran it is gone (killed): marked by the next closedloop command"


def _owner_of_tags(tags: list[str]) -> Owner | None:
    for tag in tags:
        if tag.startswith(f"{TAG}:"):
            return Owner.parse(tag.removeprefix(f"{TAG}:"))
    return None


def sweep_prefect(api_url: str) -> list[str]:
    """Set Crashed the Prefect flow and task runs still unfinished whose process died on this host."""
    marked: list[str] = []
    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=TIMEOUT_S) as http:
        for kind in ("flow_runs", "task_runs"):
            found = {kind: {"tags": {"all_": [TAG]}, "state": {"type": {"any_": UNFINISHED}}}, "limit": 200}
            for run in http.post(f"{kind}/filter", json=found).raise_for_status().json():
                owner = _owner_of_tags(run.get("tags") or [])
                if owner is None or not owner.dead_here():
                    continue
                state = {"type": "CRASHED", "name": "Crashed", "message": _message(owner)}
                http.post(f"{kind}/{run['id']}/set_state", json={"state": state, "force": True}).raise_for_status()
                marked.append(f"prefect {kind[:-5]} run {run['name']} ({run['id']})")
    return marked


def sweep_mlflow(tracking_uri: str) -> list[str]:
    """End as KILLED the MLflow runs still RUNNING whose process died on this host."""
    import socket

    marked: list[str] = []
    api = tracking_uri.rstrip("/") + "/api/2.0/mlflow/"
    with httpx.Client(base_url=api, timeout=TIMEOUT_S) as http:
        experiments = http.post("experiments/search", json={"max_results": 1000}).raise_for_status().json()
        ids = [e["experiment_id"] for e in experiments.get("experiments", [])]
        if not ids:
            return marked
        where = f"attributes.status = 'RUNNING' and tags.`{TAG}` LIKE '{socket.gethostname()}:%'"
        search = {"experiment_ids": ids, "filter": where, "max_results": 1000}
        for run in http.post("runs/search", json=search).raise_for_status().json().get("runs", []):
            run_id = run["info"]["run_id"]
            tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
            owner = Owner.parse(tags.get(TAG, ""))
            if owner is None or not owner.dead_here():
                continue
            note = {"run_id": run_id, "key": NOTE_TAG, "value": _message(owner)}
            http.post("runs/set-tag", json=note).raise_for_status()
            ended = {"run_id": run_id, "status": "KILLED", "end_time": int(time.time() * 1000)}
            http.post("runs/update", json=ended).raise_for_status()
            marked.append(f"mlflow run {run['info'].get('run_name') or run_id} ({run_id})")
    return marked


def sweep(prefect_api_url: str | None, mlflow_tracking_uri: str | None) -> list[str]:
    """Mark the runs of dead processes on both servers; a server that does not answer is left for next time."""
    marked: list[str] = []
    for name, url, swept in (
        ("prefect", prefect_api_url, sweep_prefect),
        ("mlflow", mlflow_tracking_uri, sweep_mlflow),
    ):
        if not url:
            continue
        try:
            marked += swept(url)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            logger.info("runs of killed processes not swept on %s (%s): next time", name, exc)
    return marked
