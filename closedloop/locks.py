"""One writer per lake at a time: ingests, replays and retractions of a dataset take turns.

Two ingests of the same new files started together would both find them unledgered and both store them; under
the lock the second finds the first one's ledger records and stores nothing. The lock is released by the
operating system or the database when its holder dies (``kill -9`` included), never by a timeout:

- a lake on disk: ``flock`` on ``<lake>/<dataset>/.lock`` (hidden, so no listing of the lake sees it);
- a lake on S3: a PostgreSQL session-level advisory lock keyed by the lake's URI, on the production profile's
  PostgreSQL server (S3 has no lock, and every production process reaches that server).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from closedloop import storage

logger = logging.getLogger(__name__)
POLL_S = 0.2


class LockTimeout(TimeoutError):
    """The lake stayed locked by another writer for longer than the wait allowed."""


@contextmanager
def lake_lock(root: str, postgres_url: str | None, wait_s: float) -> Iterator[None]:
    """Hold the write lock of the lake at ``root`` (``<lake>/<dataset>``), waiting up to ``wait_s`` for it."""
    location = storage.parse(root)
    if location.scheme == "file":
        with _file_lock(location.path / ".lock", wait_s):
            yield
        return
    if not postgres_url:
        raise storage.StorageError(f"{root}: a lake on S3 needs a PostgreSQL server for its lock (postgres_url)")
    with _advisory_lock(root, postgres_url, wait_s):
        yield


@contextmanager
def _file_lock(path: Path, wait_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _wait(lambda: _try_flock(fd), f"{path}", wait_s, lambda: _holder(fd))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text else "another process"


@contextmanager
def _advisory_lock(root: str, postgres_url: str, wait_s: float) -> Iterator[None]:
    import psycopg

    key = int.from_bytes(hashlib.sha256(f"closedloop lake {root}".encode()).digest()[:8], "big", signed=True)
    conninfo = postgres_url.rstrip("/") + "/postgres"
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise storage.StorageError(f"{root}: cannot reach PostgreSQL for the lake's lock ({exc})") from exc
    with conn:

        def attempt() -> bool:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            return bool(row and row[0])

        def holder() -> str:
            row = conn.execute(  # a bigint key shows as its high and low 32 bits
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
                ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
            ).fetchone()
            return f"PostgreSQL backend {row[0]}" if row else "another process"

        _wait(attempt, f"advisory lock {key} on {root}", wait_s, holder)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _wait(attempt: Callable[[], bool], what: str, wait_s: float, holder: Callable[[], str]) -> None:
    deadline = time.monotonic() + wait_s
    if attempt():
        return
    logger.info("waiting for the lake's lock (%s, held by %s)", what, holder())
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        if attempt():
            return
    raise LockTimeout(f"the lake is locked by {holder()} for more than {wait_s:g} s ({what})")
