"""What a benchmark returns and how each side is measured: rows of figures vs a raw baseline, fresh processes."""

from __future__ import annotations

import math
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

REPEATS = 3  # timed runs per side where one run takes seconds


@dataclass
class Measurement:
    benchmark: str
    metric: str
    unit: str
    project: float
    baseline: float
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        """Project / baseline."""
        return self.project / self.baseline if self.baseline else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


@dataclass
class BenchReport:
    started_at: str
    machine: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "machine": self.machine,
            "measurements": [m.to_dict() for m in self.measurements],
        }

    def markdown(self) -> str:
        lines = [
            "| benchmark | metric | closedloop | raw baseline | ratio (closedloop / baseline) | note |",
            "|---|---|---|---|---|---|",
        ]
        for m in self.measurements:
            lines.append(
                f"| {m.benchmark} | {m.metric} ({m.unit}) | {m.project:,.3g} | {m.baseline:,.3g} | "
                f"{m.ratio:.2f} | {m.note} |"
            )
        return "\n".join(lines) + "\n"


def in_child(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """Run ``fn`` in a fresh interpreter and return its figures plus its peak memory growth."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def in_parent_process(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """``in_child`` for work that starts processes of its own (a Dask LocalCluster): a non-daemonic child."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_send_measured, args=(send, fn, *args), daemon=False)
    child.start()
    figures: dict[str, float] = receive.recv()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed in its process (exit code {child.exitcode})")
    return figures


def _send_measured(send: Any, fn: Callable[..., dict[str, float]], *args: Any) -> None:
    send.send(_measured(fn, *args))
    send.close()


def _measured(fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    import psutil

    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    figures = fn(*args)
    figures.setdefault("seconds", time.perf_counter() - started)  # fn may time itself, imports excluded
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures["peak_mb"] = max(peak - before, 0) / 2**20
    return figures


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
