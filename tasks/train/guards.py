"""Guards of an automatic retrain: cool-down, daily budget, and labels the champion has not seen.

The drift trigger and the weekly schedule turn them on; a data scientist's manual run skips them. The first
guard that fails defers the run, and the verdict says which and why.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

AUTOMATIC_TAG = "closedloop.automatic_retrain"  # on versions registered by a guarded (automatic) run
DAY = timedelta(days=1)


class RetrainGuards(BaseModel):
    """Checks before an automatic retrain; the drift trigger and the weekly schedule turn them on."""

    enabled: bool = Field(default=False, description="check the guards before training (off for manual runs)")
    cooldown_minutes: float = Field(
        default=60, ge=0, description="no automatic retrain within this long after the last automatic one"
    )
    max_per_day: int = Field(default=4, ge=1, description="automatic retrains in the last 24 hours, at most")
    min_new_labels: int = Field(
        default=200,
        ge=1,
        description="applications with a matured label made after the champion's training window ended, at least",
    )


class GuardVerdict(BaseModel):
    """What the guards saw; ``deferred`` names the first guard that failed (None: the retrain may go ahead)."""

    model_config = ConfigDict(frozen=True)

    deferred: str | None = None
    minutes_since_last_version: float | None = None
    versions_last_24h: int | None = None
    new_labels: int | None = None
    champion_window_end: datetime | None = None


def recent_retrains(guards: RetrainGuards, now: datetime, automatic: list[datetime]) -> GuardVerdict:
    """Cool-down since the last automatic retrain, then the daily budget; ``automatic``: when each was registered.

    Only automatic retrains count: a data scientist's manual run does not start the cool-down.
    """
    since = None
    if automatic:
        since = round((now - max(automatic)).total_seconds() / 60, 2)
        if since < guards.cooldown_minutes:
            return GuardVerdict(
                deferred=f"cool-down: the last automatic retrain registered its version {since:.1f} min ago "
                f"(< {guards.cooldown_minutes})",
                minutes_since_last_version=since,
            )
    today = sum(1 for registered in automatic if now - registered < DAY)
    deferred = None
    if today >= guards.max_per_day:
        deferred = f"daily budget: {today} automatic retrains in the last 24 hours (max {guards.max_per_day})"
    return GuardVerdict(deferred=deferred, minutes_since_last_version=since, versions_last_24h=today)


def label_coverage(
    verdict: GuardVerdict, guards: RetrainGuards, matured: pd.Series, seen_until: datetime | None
) -> GuardVerdict:
    """Enough matured labels on applications made after the champion's training window (``seen_until``)?

    Retraining is only worth it on labels the champion has not seen: with a 90-day label delay a fresh drift has
    none yet, and a retrain now would learn the old world again. Without a champion every matured label counts.
    """
    new = int((matured > seen_until).sum()) if seen_until is not None else len(matured)
    deferred = None
    if new < guards.min_new_labels:
        deferred = (
            f"not enough labels: {new} applications with a matured label "
            + (f"after the champion's training window (ended {seen_until:%Y-%m-%d})" if seen_until else "in all")
            + f"; need {guards.min_new_labels}"
        )
    return verdict.model_copy(update={"deferred": deferred, "new_labels": new, "champion_window_end": seen_until})


def without_labels(verdict: GuardVerdict, why: str) -> GuardVerdict:
    """No usable matured label at all (``why``: the training data's own message): the retrain waits."""
    return verdict.model_copy(update={"deferred": f"not enough labels: {why}"})
