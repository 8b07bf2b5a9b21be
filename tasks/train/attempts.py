"""The automatic retrains a dataset's lake keeps, so that every run of every process sees the same ones.

```
<lake>/<dataset>/retrains/<started %Y%m%dT%H%M%S%f>-<flow run id>.json   an automatic retrain that went ahead
<lake>/<dataset>/retrains/.lock                                          on disk: the claim's lock
```
A guarded run reads the attempts and, when the cool-down and the daily budget let it go, writes its own, all
under one lock (``closedloop.locks``: ``flock`` on disk, a PostgreSQL advisory lock on S3): two runs that start at
the same instant take turns, and the second finds the first's record. The lock is held for a listing and a few
small reads, never while training. The record is written again when the run ends deferred or trained; a run that
fails or is killed leaves it "started", and it keeps counting for the cool-down.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from closedloop import storage
from closedloop.lake import Lake
from closedloop.locks import lake_lock
from tasks.train.guards import DAY, Attempt, GuardVerdict, RetrainGuards, recent_retrains

AREA = "retrains"
CLAIM_WAIT_S = 60.0  # another run's claim takes well under a second; longer means its process hangs
STAMP = "%Y%m%dT%H%M%S%f"


def attempt_uri(lake: Lake, started: datetime, flow_run_id: str) -> str:
    return storage.join(lake.root, AREA, f"{started.astimezone(UTC):{STAMP}}-{flow_run_id}.json")


def write_attempt(lake: Lake, attempt: Attempt) -> str:
    """Write (or rewrite) an attempt's record, a whole object; returns its URI."""
    body = json.dumps(attempt.model_dump(mode="json"), indent=2).encode()
    return storage.write_bytes(attempt_uri(lake, attempt.started, attempt.flow_run_id), body, lake.endpoint_url)


def read_attempts(lake: Lake, since: datetime) -> list[Attempt]:
    """The attempts started at or after ``since``, oldest first (the name's time spares reading older records)."""
    found = []
    for uri in storage.list_objects(storage.join(lake.root, AREA), lake.endpoint_url):
        name = uri.rsplit("/", 1)[-1]
        if not name.endswith(".json"):
            continue
        started = datetime.strptime(name.split("-", 1)[0], STAMP).replace(tzinfo=UTC)
        if started >= since:
            found.append(Attempt.model_validate_json(storage.read_bytes(uri, lake.endpoint_url)))
    return found


def claim(
    lake: Lake,
    postgres_url: str | None,
    guards: RetrainGuards,
    now: datetime,
    flow_run_id: str,
    started_by: str,
) -> GuardVerdict:
    """The time guards' verdict; when they let the run go, its attempt is recorded before the lock is let go.

    Records are read back over a day plus the cool-down: enough for the budget, and for an attempt that started
    before the cool-down but ended inside it.
    """
    since = now - DAY - timedelta(minutes=guards.cooldown_minutes)
    with lake_lock(storage.join(lake.root, AREA), postgres_url, CLAIM_WAIT_S):
        verdict = recent_retrains(guards, now, read_attempts(lake, since))
        if verdict.deferred is None:
            write_attempt(lake, Attempt(flow_run_id=flow_run_id, started_by=started_by, started=now))
    return verdict


def finish(lake: Lake, attempt: Attempt, outcome: str, detail: str, ended: datetime) -> str:
    """Record how a claimed attempt ended (deferred for labels, or trained with its version)."""
    return write_attempt(lake, attempt.model_copy(update={"outcome": outcome, "detail": detail, "ended": ended}))
