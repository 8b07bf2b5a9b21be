"""pid_alive: a recorded pid is alive while its process runs, and not once it has exited (zombie or reaped)."""

from __future__ import annotations

import os
import subprocess
import sys

from closedloop.processes import pid_alive


def test_a_running_process_is_alive() -> None:
    assert pid_alive(os.getpid())


def test_an_exited_child_is_not_alive_even_before_it_is_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while True:  # exited but not waited for: a zombie
            with open(f"/proc/{child.pid}/stat") as handle:
                if handle.read().split(")")[-1].split()[0] == "Z":
                    break
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid)
