"""The model the service answers with: the registry's champion, reloaded when its alias moves, and a rollout.

A rollout (shadow or canary) is a candidate version scored beside the champion; it ends by itself, rolled back when
its errors or latency pass the plan's limits.
"""

import hashlib
import logging
import os
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from closedloop.registry import CHAMPION
from tasks.score.loading import load_version
from tasks.score.scoring import ScoringModel

logger = logging.getLogger(__name__)


class NoChampion(RuntimeError):
    """No model carries the champion alias yet: the service is not ready."""


@dataclass
class Rollout:
    """A candidate version in shadow or canary, with the guard that ends it when it breaks its budgets."""

    model: ScoringModel
    strategy: str  # "shadow" or "canary"
    share: float  # canary: the share of entities it answers for
    max_error_rate: float
    max_p99_ms: float
    min_requests: int
    requests: int = 0
    errors: int = 0
    tripped: str | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2_000))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, model: ScoringModel, plan: dict[str, str]) -> "Rollout":
        return cls(
            model=model,
            strategy=plan["strategy"],
            share=float(plan.get("share", 0.0)),
            max_error_rate=float(plan.get("max_error_rate", 0.01)),
            max_p99_ms=float(plan.get("max_p99_ms", 50.0)),
            min_requests=int(plan.get("min_requests", 100)),
        )

    @property
    def active(self) -> bool:
        return self.tripped is None

    def routes(self, key: Any) -> bool:
        """Canary: whether this entity is in the candidate's share (sticky: a hash of version and key)."""
        if self.strategy != "canary" or not self.active:
            return False
        draw = int.from_bytes(hashlib.sha256(f"canary:{self.model.version}:{key}".encode()).digest()[:8], "big")
        return draw / 2**64 < self.share

    def observe(self, seconds: float | None, count: int = 1) -> str | None:
        """Count ``count`` requests (``seconds`` each, or None: failed); the breach reason when this trips it."""
        with self._lock:
            self.requests += count
            if seconds is None:
                self.errors += count
            else:
                self.latencies.extend([seconds * 1000] * count)
            if self.tripped is not None or self.requests < self.min_requests:
                return None
            error_rate = self.errors / self.requests
            if error_rate > self.max_error_rate:
                self.tripped = (
                    f"error rate {error_rate:.2%} over budget {self.max_error_rate:.2%} "
                    f"({self.errors} of {self.requests} requests)"
                )
            elif self.latencies and self.requests % 10 == 0:
                p99 = float(np.percentile(np.fromiter(self.latencies, dtype="float64"), 99))
                if p99 > self.max_p99_ms:
                    self.tripped = f"p99 latency {p99:.2f} ms over budget {self.max_p99_ms:g} ms"
            return self.tripped

    def summary(self) -> dict[str, Any]:
        with self._lock:
            values = np.fromiter(self.latencies, dtype="float64")
            return {
                "version": self.model.version,
                "strategy": self.strategy,
                "requests": self.requests,
                "errors": self.errors,
                "p99_ms": float(np.percentile(values, 99)) if len(values) else None,
                "tripped": self.tripped,
            }


class Champion:
    """The champion and a rollout's candidate, swapped atomically when aliases move (never half-loaded)."""

    def __init__(self, tracking_uri: str, dataset: str) -> None:
        self.tracking_uri, self.dataset = tracking_uri, dataset
        self._current: ScoringModel | None = None
        self.rollout: Rollout | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @property
    def current(self) -> ScoringModel | None:
        return self._current

    def refresh(self) -> bool:
        """Load the version the alias points at if it is not the one serving; True when the model changed."""
        from tasks.promote.promotion import aliases

        with self._lock:
            try:  # one registry call per refresh: the champion and the candidate come with the model's aliases
                known = aliases(self.tracking_uri, self.dataset)
            except Exception as exc:
                self.last_error = f"model registry: {exc}"
                logger.warning("registry lookup failed, models unchanged: %s", exc)
                return False
            self._refresh_rollout(known)
            try:
                version = known.get(CHAMPION)
                if version is None:
                    raise NoChampion(f"no version of {self.dataset!r} carries the champion alias")
                if self._current is not None and self._current.version == version:
                    return False
                loaded = load_version(self.tracking_uri, self.dataset, version)
            except Exception as exc:  # keep serving the model we have; readiness says why
                self.last_error = str(exc)
                logger.warning("champion refresh failed: %s", exc)
                return False
            previous = self._current.version if self._current else None
            self._current = loaded
            self.last_error = None
            logger.info("champion %s v%s now serving (was %s)", self.dataset, version, previous)
            return True

    def _refresh_rollout(self, known: dict[str, str]) -> None:
        from tasks.promote.promotion import rollout_state

        try:
            state = rollout_state(self.tracking_uri, self.dataset, known)
        except Exception as exc:
            logger.warning("rollout lookup failed, candidate unchanged: %s", exc)
            return
        if state is None or state.get("verdict") != "running" or state.get("strategy") not in ("shadow", "canary"):
            if self.rollout is not None:
                logger.info("rollout of v%s over", self.rollout.model.version)
            self.rollout = None
            return
        if self.rollout is not None and self.rollout.model.version == state["version"]:
            return  # the same rollout (a tripped one stays tripped until the alias goes)
        try:
            self.rollout = Rollout.of(load_version(self.tracking_uri, self.dataset, state["version"]), state)
        except Exception as exc:  # a candidate that cannot load is not served; its rollout is ended
            logger.warning("candidate v%s cannot be loaded: %s", state["version"], exc)
            self.end_rollout(state["version"], f"candidate cannot be loaded: {exc}", {})
            return
        logger.info("v%s in %s rollout (share %s)", state["version"], self.rollout.strategy, self.rollout.share)

    def end_rollout(self, version: str, reason: str, stats: dict[str, Any]) -> None:
        """Roll the candidate back in the registry, off the request path (the local guard already stopped it)."""
        from tasks.promote.promotion import end_rollout

        by = f"scoring service {socket.gethostname()}:{os.getpid()}"

        def run() -> None:
            try:
                end_rollout(
                    self.tracking_uri, self.dataset, version, "rolled back", {"reason": reason, "by": by, **stats}
                )
                logger.warning("rollout of v%s rolled back: %s", version, reason)
            except Exception as exc:  # the local guard holds; the next refresh tries again
                logger.error("could not record the rollback of v%s: %s", version, exc)

        threading.Thread(target=run, name="rollout-rollback", daemon=True).start()
