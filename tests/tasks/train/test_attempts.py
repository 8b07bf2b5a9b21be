"""The lake's record of automatic retrains: runs that claim at the same instant take turns under the lock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from closedloop import storage
from closedloop.lake import Lake
from tasks.train import attempts
from tasks.train.guards import DEFERRED, Attempt, GuardVerdict, RetrainGuards

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
GUARDS = RetrainGuards(enabled=True, cooldown_minutes=60, max_per_day=4)


@pytest.fixture(params=["file", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """A disk lake (``flock``), or an S3 lake with its PostgreSQL advisory lock."""
    if request.param == "file":
        return Lake.of((tmp_path / "lake").as_uri(), "credit")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"attempts-{tmp_path.name[-20:].lower().replace('_', '-')}"
    storage.ensure_bucket(bucket, endpoint)
    return Lake.of(f"s3://{bucket}/lake", "credit", endpoint)


def test_twenty_runs_claiming_at_the_same_instant_let_exactly_one_go(lake: Lake) -> None:
    start = threading.Barrier(20)
    verdicts: dict[str, GuardVerdict] = {}

    def run(i: int) -> None:
        start.wait()
        verdicts[f"run-{i}"] = attempts.claim(lake, POSTGRES, GUARDS, NOW, f"run-{i}", f"event:{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    went = [run for run, verdict in verdicts.items() if verdict.deferred is None]
    assert len(verdicts) == 20 and len(went) == 1, verdicts
    recorded = attempts.read_attempts(lake, NOW - timedelta(days=1))
    assert [a.flow_run_id for a in recorded] == went  # the nineteen turned away left no record
    assert all(
        v.deferred and v.deferred.startswith(f"cool-down: the last automatic retrain (flow run {went[0]})")
        for run, v in verdicts.items()
        if run not in went
    )


def test_a_finished_attempt_is_read_back_and_older_ones_are_not_read(lake: Lake) -> None:
    old = Attempt(flow_run_id="old", started_by="schedule", started=NOW - timedelta(days=3))
    attempts.write_attempt(lake, old)
    assert attempts.claim(lake, POSTGRES, GUARDS, NOW, "new", "event:e").deferred is None
    claimed = Attempt(flow_run_id="new", started_by="event:e", started=NOW)
    attempts.finish(lake, claimed, DEFERRED, "not enough labels: 3; need 200", NOW + timedelta(seconds=5))
    (read,) = attempts.read_attempts(lake, NOW - timedelta(days=1))
    assert read == claimed.model_copy(
        update={"outcome": DEFERRED, "detail": "not enough labels: 3; need 200", "ended": NOW + timedelta(seconds=5)}
    )
    later = attempts.claim(lake, POSTGRES, GUARDS, NOW + timedelta(minutes=30), "next", "event:f")
    assert later.deferred == (
        "cool-down: the last automatic retrain (flow run new) was deferred for labels 29.9 min ago (< 60.0)"
    )
    assert len(storage.list_objects(storage.join(lake.root, attempts.AREA), lake.endpoint_url)) == 2  # no lock file
