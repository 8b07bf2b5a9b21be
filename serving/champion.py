"""The model the service answers with: the last sealed promotion, reloaded when it changes, and a rollout.

The service serves the version the deploy flow's seal names (``closedloop/seal.py``), never one an alias names by
itself: a champion alias moved by hand leaves the served model as it was, and readiness reports the disagreement
(``degraded``) until the aliases and the seal agree again. A refused version is logged and announced with an event.

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

from closedloop import events, seal
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
    """The champion and a rollout's candidate, swapped atomically when their seals change (never half-loaded)."""

    def __init__(self, tracking_uri: str, dataset: str, keys: seal.KeyFiles) -> None:
        self.tracking_uri, self.dataset, self.keys = tracking_uri, dataset, keys
        self._current: ScoringModel | None = None
        self.rollout: Rollout | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.degraded: str | None = None  # the registry disagrees with the sealed champion that is served
        self._seq = 0  # the newest sealed promotion served: an older seal put back by hand is refused

    @property
    def current(self) -> ScoringModel | None:
        return self._current

    def refresh(self) -> bool:
        """Load the version the last sealed promotion names if it is not the one serving; True when it changed."""
        with self._lock:
            try:  # one registry call per refresh: the aliases and the seals come with the registered model
                aliases, tags = seal.registered(self.tracking_uri, self.dataset)
            except Exception as exc:
                self.last_error = f"model registry: {exc}"
                logger.warning("registry lookup failed, models unchanged: %s", exc)
                return False
            self._refresh_rollout(aliases, tags)
            try:
                chosen = seal.served(self.keys, self.dataset, aliases, tags, self._seq)
            except seal.SealError as exc:  # nothing sealed to serve: keep what serves, say why
                self._refuse(str(exc))
                return False
            self._disagreement(chosen.problem)
            if self._current is not None and self._current.version == chosen.version:
                self._seq = chosen.seq
                return False
            try:
                seal.check_run(self.tracking_uri, self.dataset, chosen.version, chosen.run_id)
                loaded = load_version(self.tracking_uri, self.dataset, chosen.version)
            except Exception as exc:  # keep serving the model we have; readiness says why
                self._refuse(f"sealed champion v{chosen.version} cannot be served: {exc}")
                return False
            previous = self._current.version if self._current else None
            self._current, self._seq = loaded, chosen.seq
            self.last_error = None
            self.degraded = chosen.problem
            logger.info("champion %s v%s now serving (was %s)", self.dataset, chosen.version, previous)
            return True

    def _refuse(self, reason: str) -> None:
        """Keep the served model; readiness reports ``reason`` (degraded while a model serves, else not ready)."""
        self.last_error = reason
        if self._current is not None:
            reason = f"{reason}; v{self._current.version} keeps serving"
        changed = reason != self.degraded
        self.degraded = reason if self._current is not None else None
        if changed:
            logger.error("champion refused: %s", reason)
            _announce(self.dataset, reason)

    def _disagreement(self, problem: str | None) -> None:
        if problem is not None and problem != self.degraded:
            logger.error("%s", problem)
            _announce(self.dataset, problem)
        self.degraded = problem
        if problem is None:
            self.last_error = None

    def _refresh_rollout(self, aliases: dict[str, str], tags: dict[str, str]) -> None:
        from tasks.promote.promotion import CANDIDATE, rollout_state

        version = aliases.get(CANDIDATE)
        state = None
        if version is not None:
            try:
                sealed = seal.opened(seal.verify_key(self.keys), tags.get(seal.CANDIDATE_TAG), f"candidate v{version}")
                if str(sealed.get("version")) != version or sealed.get("dataset") != self.dataset:
                    raise seal.SealError(f"the candidate seal names v{sealed.get('version')}, not v{version}")
                state = rollout_state(self.tracking_uri, self.dataset, aliases)
                if state is not None:  # the plan as sealed; only the verdict comes from the tags
                    state = {
                        **{k: str(v) for k, v in sealed["plan"].items()},
                        "version": version,
                        "verdict": state.get("verdict", ""),
                    }
            except Exception as exc:  # a candidate without a valid seal never sees traffic
                logger.warning("candidate v%s not routed: %s", version, exc)
                state = None
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


def _announce(dataset: str, reason: str) -> None:
    """The event of a refused champion, off the request path (no Prefect server: logged only)."""

    def run() -> None:
        try:
            from prefect.events import emit_event

            emit_event(
                event=events.CHAMPION_REFUSED,
                resource=events.model_resource(dataset),
                payload={"reason": reason, "by": f"scoring service {socket.gethostname()}:{os.getpid()}"},
            )
        except Exception as exc:
            logger.warning("could not emit %s: %s", events.CHAMPION_REFUSED, exc)

    threading.Thread(target=run, name="champion-refused-event", daemon=True).start()
