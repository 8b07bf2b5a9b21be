"""Guards of an automatic retrain: cool-down, daily budget, and labels the champion has not seen.

The drift trigger and the weekly schedule turn them on; a data scientist's manual run skips them. The first
guard that fails defers the run, and the verdict says which and why. The time guards read the automatic
attempts the lake keeps (``tasks/train/attempts.py``), so every run of every process sees the same ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

AUTOMATIC_TAG = "closedloop.automatic_retrain"  # on versions registered by a guarded (automatic) run
DAY = timedelta(days=1)
DEFERRED = "deferred"  # an attempt's outcome when the label guard held it back
TRAINED = "trained"


class RetrainGuards(BaseModel):
    """Checks before an automatic retrain; the drift trigger and the weekly schedule turn them on."""

    enabled: bool = Field(default=False, description="check the guards before training (off for manual runs)")
    cooldown_minutes: float = Field(
        default=60,
        ge=0,
        description="no automatic retrain within this long after the last automatic attempt started or ended "
        "(trained, deferred for labels, failed or still running)",
    )
    max_per_day: int = Field(
        default=4, ge=1, description="automatic retrains in the last 24 hours, at most (label deferrals not counted)"
    )
    min_new_labels: int = Field(
        default=200,
        ge=1,
        description="applications with a matured label made after the champion's training window ended, at least",
    )


class Attempt(BaseModel):
    """An automatic retrain that passed the cool-down and the daily budget, as the lake's record keeps it.

    ``outcome``: "started" until the run says otherwise, so a run that failed or was killed keeps counting;
    "deferred" (the label guard held it back, ``detail`` says why) or "trained" (``detail``: the version).
    """

    model_config = ConfigDict(frozen=True)

    flow_run_id: str
    started_by: str
    started: datetime
    ended: datetime | None = None
    outcome: str = "started"
    detail: str | None = None

    @property
    def last(self) -> datetime:
        """The cool-down runs from here: the end of a finished attempt, else its start."""
        return self.ended or self.started

    def describe(self) -> str:
        """What the attempt did, for a deferral's reason."""
        if self.outcome == TRAINED:
            return f"registered v{self.detail}"
        if self.outcome == DEFERRED:
            return "was deferred for labels"
        return "started (still running, failed or killed)"


class GuardVerdict(BaseModel):
    """What the guards saw; ``deferred`` names the first guard that failed (None: the retrain may go ahead)."""

    model_config = ConfigDict(frozen=True)

    deferred: str | None = None
    minutes_since_last_retrain: float | None = None
    retrains_last_24h: int | None = None
    new_labels: int | None = None
    champion_window_end: datetime | None = None


def recent_retrains(guards: RetrainGuards, now: datetime, attempts: list[Attempt]) -> GuardVerdict:
    """Cool-down since the last automatic attempt, then the daily budget.

    Every attempt that went ahead counts for the cool-down, whatever became of it: one still training (the runs
    of a drift storm arrive while it trains), one deferred for labels (a storm would otherwise read the lake's
    labels once per event), one that failed or was killed (the storm would otherwise retrain again at once). An
    attempt this function turned away is never recorded, so a storm cannot push the cool-down on for ever. The
    budget counts the attempts that trained or tried to: a label deferral spent no training. A data scientist's
    manual run is no attempt.
    """
    since = None
    if attempts:
        last = max(attempts, key=lambda a: a.last)
        since = round((now - last.last).total_seconds() / 60, 2)
        if since < guards.cooldown_minutes:
            return GuardVerdict(
                deferred=f"cool-down: the last automatic retrain (flow run {last.flow_run_id}) {last.describe()} "
                f"{since:.1f} min ago (< {guards.cooldown_minutes})",
                minutes_since_last_retrain=since,
            )
    today = sum(1 for a in attempts if now - a.started < DAY and a.outcome != DEFERRED)
    deferred = None
    if today >= guards.max_per_day:
        deferred = f"daily budget: {today} automatic retrains in the last 24 hours (max {guards.max_per_day})"
    return GuardVerdict(deferred=deferred, minutes_since_last_retrain=since, retrains_last_24h=today)


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
