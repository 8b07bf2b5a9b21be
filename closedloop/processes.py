"""Whether a process still runs: the inference log, the stack and the runs a command started ask it of a pid.

A pid alone outlives its process: the kernel hands it to another one later. :class:`Owner` adds the host and the
process's start time (``/proc/<pid>/stat``), so a record names one process only, and a reused pid is not taken for
the process that recorded it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def started_at(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot; empty where ``/proc`` does not say."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass(frozen=True)
class Owner:
    """One process on one host: what a run records about the process that started it."""

    host: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Owner:
        """The process calling it."""
        return cls(socket.gethostname(), os.getpid(), started_at(os.getpid()))

    @classmethod
    def parse(cls, label: str) -> Owner | None:
        """The owner written by :meth:`label` (``host:pid:started``), or None for any other text."""
        host, _, rest = label.rpartition(":")
        host, _, pid = host.rpartition(":")
        return cls(host, int(pid), rest) if host and pid.isdigit() else None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    def dead_here(self) -> bool:
        """Whether this owner ran on this host and is gone (its pid free, or taken by a later process)."""
        if self.host != socket.gethostname():
            return False  # another machine's pids say nothing here
        if not pid_alive(self.pid):
            return True
        return bool(self.started) and started_at(self.pid) not in ("", self.started)
