from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from closedloop import storage
from closedloop.inference_log import (
    InferenceLog,
    InferenceLogFull,
    InferenceRecord,
    inference_uri,
    read_window,
)
from closedloop.lake import Lake
from closedloop.settings import Settings

DAY = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def record(i: int = 0, at: datetime = DAY, **changes: object) -> InferenceRecord:
    values: dict[str, object] = {
        "request_id": f"req-{i}-{uuid.uuid4().hex[:8]}",
        "scored_at": at,
        "dataset": "credit",
        "model_version": "7",
        "entity_id": 1000 + i,
        "features": {"age": 30 + i, "income": 4200.5, "purpose": "car", "owns_home": True},
        "score": 0.25,
        "decision": "approve",
        "latency_ms": 3.5,
        "variant": "champion",
        "reasons": ["income", "age"],
    }
    values.update(changes)
    return InferenceRecord(**values)  # type: ignore[arg-type]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def parquet_files(lake: Lake) -> list[str]:
    return [u for u in storage.list_objects(inference_uri(lake), lake.endpoint_url) if u.endswith(".parquet")]


@pytest.fixture
def lake(settings: Settings) -> Lake:
    return Lake.of(settings.lake_uri, "credit")


def assert_round_trip(lake: Lake) -> None:
    sent = [
        record(0, DAY + timedelta(microseconds=123456)),
        record(1, DAY + timedelta(seconds=1), reasons=[], variant="shadow", decision="refuse", score=0.9),
        record(2, DAY + timedelta(seconds=2), features={"age": 41, "income": 3100, "extra": None}),
    ]
    log = InferenceLog(lake)
    for r in reversed(sent):
        log.append(r)
    written = log.flush()
    assert len(written) == 1
    assert written[0].startswith(storage.join(inference_uri(lake), "event_date=2025-03-01") + "/")
    assert written[0].rsplit("/", 1)[1].startswith("20250301T120000123456-")
    assert log.flush() == [] and log.pending == 0

    schema = pq.read_schema(io.BytesIO(storage.read_bytes(written[0], lake.endpoint_url)))
    assert schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("reasons").type == pa.list_(pa.string())

    got = read_window(lake, DAY, DAY + timedelta(days=1))
    assert str(got["scored_at"].dtype) == "datetime64[us, UTC]"
    assert list(got["request_id"]) == [r.request_id for r in sent]
    assert [t.to_pydatetime() for t in got["scored_at"]] == [r.scored_at for r in sent]
    assert list(got["entity_id"]) == [1000, 1001, 1002]
    assert list(got["variant"]) == ["champion", "shadow", "champion"]
    assert list(got["decision"]) == ["approve", "refuse", "approve"]
    assert list(got["score"]) == [0.25, 0.9, 0.25]
    assert list(got["latency_ms"]) == [3.5] * 3
    assert list(got["dataset"]) == ["credit"] * 3 and list(got["model_version"]) == ["7"] * 3
    assert got["reasons"].tolist() == [["income", "age"], [], ["income", "age"]]
    assert {c for c in got.columns if c.startswith("feature.")} == {
        "feature.age",
        "feature.income",
        "feature.purpose",
        "feature.owns_home",
        "feature.extra",
    }
    assert list(got["feature.age"]) == [30, 31, 41]
    assert list(got["feature.income"]) == [4200.5, 4200.5, 3100.0]  # int and float in one batch: float
    assert got["feature.purpose"].tolist()[:2] == ["car", "car"] and got["feature.purpose"].isna().tolist()[2]
    assert got["feature.owns_home"].tolist()[:2] == [True, True] and pd.isna(got["feature.owns_home"].iloc[2])
    assert got["feature.extra"].isna().all()


def test_round_trip_on_a_file_lake(lake: Lake) -> None:
    assert_round_trip(lake)


@pytest.mark.integration
def test_round_trip_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = f"inference-{tmp_path.name.replace('_', '-').lower()[-30:]}"
    storage.ensure_bucket(bucket, s3_endpoint)
    lake = Lake.of(f"s3://{bucket}/lake", "credit", s3_endpoint)
    assert_round_trip(lake)
    assert all(u.startswith(f"s3://{bucket}/lake/credit/inference/event_date=2025-03-01/") for u in parquet_files(lake))


def test_two_days_two_partitions_and_the_window_reads_only_overlapping_days(lake: Lake) -> None:
    late = datetime(2025, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    early = datetime(2025, 3, 2, 0, 0, tzinfo=UTC)
    log = InferenceLog(lake)
    log.append(record(0, early))
    log.append(record(1, late))
    log.append(record(2, early + timedelta(hours=5)))
    written = log.flush()
    assert [u.split("/")[-2] for u in written] == ["event_date=2025-03-01", "event_date=2025-03-02"]
    # a corrupt file in a day outside the window proves that day is never read
    storage.write_bytes(storage.join(inference_uri(lake), "event_date=2025-03-03", "x.parquet"), b"not parquet")

    day2 = read_window(lake, early, early + timedelta(days=1))
    assert list(day2["entity_id"]) == [1000, 1002]
    both = read_window(lake, late, early + timedelta(hours=5))  # end is exclusive
    assert list(both["entity_id"]) == [1001, 1000]
    assert list(read_window(lake, late - timedelta(days=1), late)["entity_id"]) == []
    with pytest.raises(pa.ArrowInvalid):  # the corrupt day is read once the window covers it
        read_window(lake, early, early + timedelta(days=2))


def test_empty_window_has_the_scalar_columns(lake: Lake) -> None:
    empty = read_window(lake, DAY, DAY + timedelta(days=3))
    assert empty.empty
    for column in ("request_id", "scored_at", "dataset", "model_version", "entity_id", "score", "decision"):
        assert column in empty.columns
    assert {"latency_ms", "variant", "reasons"} <= set(empty.columns)
    assert str(empty["scored_at"].dtype) == "datetime64[us, UTC]"
    with pytest.raises(ValueError, match="start"):
        read_window(lake, DAY.replace(tzinfo=None), DAY)


def test_background_thread_flushes_by_row_count(lake: Lake) -> None:
    with InferenceLog(lake, flush_rows=5, flush_seconds=600) as log:
        for i in range(5):
            log.append(record(i))
        wait_until(lambda: log.pending == 0 and len(parquet_files(lake)) == 1)
    assert len(read_window(lake, DAY, DAY + timedelta(days=1))) == 5


def test_background_thread_flushes_by_age(lake: Lake) -> None:
    with InferenceLog(lake, flush_rows=1000, flush_seconds=0.2) as log:
        log.append(record(0))
        wait_until(lambda: log.pending == 0 and len(parquet_files(lake)) == 1)
        log.append(record(1))
        wait_until(lambda: log.pending == 0 and len(parquet_files(lake)) == 2)


def test_close_flushes_the_rest(lake: Lake) -> None:
    log = InferenceLog(lake, flush_rows=1000, flush_seconds=600).start()
    for i in range(3):
        log.append(record(i))
    assert log.pending == 3
    log.close()
    assert log.pending == 0
    assert len(read_window(lake, DAY, DAY + timedelta(days=1))) == 3
    with pytest.raises(RuntimeError, match="closed"):
        log.append(record(9))


def test_concurrent_appends_lose_and_duplicate_nothing(lake: Lake) -> None:
    threads, per_thread = 8, 500
    log = InferenceLog(lake, flush_rows=300, flush_seconds=0.05).start()
    barrier = threading.Barrier(threads)

    def producer(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            log.append(record(i, DAY + timedelta(microseconds=t * per_thread + i), request_id=f"t{t}-{i}"))

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    got = read_window(lake, DAY, DAY + timedelta(days=1))
    assert len(got) == threads * per_thread
    assert got["request_id"].is_unique
    assert set(got["request_id"]) == {f"t{t}-{i}" for t in range(threads) for i in range(per_thread)}


def test_a_failed_write_keeps_the_records_for_the_next_flush(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "lake"
    blocker.write_text("a regular file where the lake's folder should be")
    lake = Lake.of(blocker.as_uri(), "credit")
    log = InferenceLog(lake)
    sent = [record(i, DAY + timedelta(seconds=i)) for i in range(3)]
    for r in sent[:2]:
        log.append(r)
    with pytest.raises(storage.StorageError):
        log.flush()
    assert log.pending == 2
    assert any("cannot write" in m and "event_date=2025-03-01" in m for m in caplog.messages)
    log.append(sent[2])  # appends still work while storage is down
    with pytest.raises(storage.StorageError):
        log.flush()

    blocker.unlink()  # storage is back
    written = log.flush()
    assert len(written) == 1 and log.pending == 0
    got = read_window(lake, DAY, DAY + timedelta(days=1))
    assert list(got["request_id"]) == [r.request_id for r in sent]


def test_background_thread_retries_after_a_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "lake"
    blocker.write_text("in the way")
    lake = Lake.of(blocker.as_uri(), "credit")
    with InferenceLog(lake, flush_rows=1, flush_seconds=0.1) as log:
        log.append(record(0))
        time.sleep(0.3)  # at least one failed attempt
        assert log.pending == 1
        blocker.unlink()
        wait_until(lambda: log.pending == 0)
    assert len(read_window(lake, DAY, DAY + timedelta(days=1))) == 1


def test_buffer_limit_raises_inference_log_full(tmp_path: Path) -> None:
    blocker = tmp_path / "lake"
    blocker.write_text("in the way")
    log = InferenceLog(Lake.of(blocker.as_uri(), "credit"), max_buffered=3)
    for i in range(3):
        log.append(record(i))
    with pytest.raises(storage.StorageError):
        log.flush()
    with pytest.raises(InferenceLogFull, match="3"):
        log.append(record(3))
    assert log.pending == 3


def test_naive_scored_at_is_refused() -> None:
    with pytest.raises(ValueError, match="scored_at"):
        record(0, datetime(2025, 3, 1, 12, 0))


def test_other_timezones_are_stored_as_utc(lake: Lake) -> None:
    paris = datetime(2025, 3, 2, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))  # 2025-03-01 23:30 UTC
    r = record(0, paris)
    assert r.scored_at.tzinfo is UTC and r.scored_at == paris
    log = InferenceLog(lake)
    log.append(r)
    assert log.flush()[0].split("/")[-2] == "event_date=2025-03-01"


_WRITER = """
import sys, time
from datetime import UTC, datetime
from pathlib import Path
from closedloop.inference_log import InferenceLog, InferenceRecord
from closedloop.lake import Lake

log = InferenceLog(Lake.of(sys.argv[1], "credit"), flush_rows=40, flush_seconds=0.2, journal_dir=Path(sys.argv[2]))
log.start()
for i in range(1_000_000):
    log.append(InferenceRecord(request_id=f"r{i:08d}", scored_at=datetime.now(UTC), dataset="credit",
        model_version="3", entity_id=i, features={"income": 1000.0 + i, "region": "north"}, score=0.25,
        decision="approve", latency_ms=1.0))
    print(i + 1, flush=True)  # acknowledged: appended and journaled
    time.sleep(0.001)
"""


def test_a_killed_writer_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """kill -9 in the middle of writing: the lake stays readable and the journal gives back the unflushed batch."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from closedloop.inference_log import InferenceLog

    lake_uri, journal = f"file://{tmp_path}/lake", tmp_path / "journal"
    child = subprocess.Popen([sys.executable, "-c", _WRITER, lake_uri, str(journal)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acknowledged = 0
    deadline = time.monotonic() + 60
    while acknowledged < 700 and time.monotonic() < deadline:  # a few flushes done, one batch in the buffer
        acknowledged = int(child.stdout.readline() or acknowledged)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    acknowledged = max([acknowledged, *(int(line) for line in child.stdout.read().split())])
    lake = Lake.of(lake_uri, "credit")
    window = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(seconds=1))
    before = read_window(lake, *window)  # readable as the killed process left it
    assert len(before) < acknowledged  # its last batch never reached the lake...

    survivor = InferenceLog(lake, journal_dir=journal)
    counts = survivor.recover()  # ...until the next process starts
    after = read_window(lake, *window)
    assert counts["recovered"] == len(after) - len(before) and counts["torn"] <= 1
    ids = set(after["request_id"])
    assert len(ids) == len(after)  # nothing twice
    assert {f"r{i:08d}" for i in range(acknowledged)} <= ids  # nothing acknowledged is lost
    assert len(after) <= acknowledged + 1  # at most the one being appended at the kill
    assert not list(journal.glob("*.jsonl")) or all(
        p.name.startswith(survivor.journal.prefix) for p in journal.glob("*")
    )
    survivor.close()
    assert not list(journal.glob("*.jsonl"))
