"""One writer per lake: the lock holds across processes, names its holder, and dies with it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from closedloop.locks import LockTimeout, lake_lock

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def _holder(root: str, postgres_url: str | None) -> subprocess.Popen[str]:
    """Another process that takes the lock, says so, and holds it until killed."""
    code = (
        "import sys, time\n"
        "from closedloop.locks import lake_lock\n"
        f"with lake_lock({root!r}, {postgres_url!r}, 30):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_second_writer_waits_and_the_lock_is_released_when_its_holder_is_killed(where: str, tmp_path: Path) -> None:
    root = (tmp_path / "lake" / "credit").as_uri() if where == "file" else f"s3://locks-{tmp_path.name[-20:]}/credit"
    holder = _holder(root, POSTGRES)
    try:
        with (
            pytest.raises(LockTimeout, match=r"the lake is locked by (pid|PostgreSQL backend) \d+"),
            lake_lock(root, POSTGRES, 0.5),
        ):
            pass
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel or the database lets go
        holder.wait(timeout=30)
        with lake_lock(root, POSTGRES, 30):  # would raise LockTimeout if the dead holder still held it
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_two_lakes_do_not_share_a_lock(tmp_path: Path) -> None:
    with (
        lake_lock(f"s3://a-{tmp_path.name[-20:]}/credit", POSTGRES, 1),
        lake_lock(f"s3://a-{tmp_path.name[-20:]}/other", POSTGRES, 1),
    ):
        pass
    with lake_lock((tmp_path / "a").as_uri(), None, 1), lake_lock((tmp_path / "b").as_uri(), None, 1):
        pass


def test_an_s3_lake_without_a_database_is_refused() -> None:
    with pytest.raises(OSError, match="needs a PostgreSQL server for its lock"), lake_lock("s3://b/credit", None, 1):
        pass
