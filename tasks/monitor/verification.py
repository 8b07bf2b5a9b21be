"""Post-deploy verification: the first judged window of a new champion, and the verdict on it.

Are the violations that led to the new champion gone, and, on the window's labelled rows, does it do no worse
than ``previous``? A champion worse by more than the margin is to be rolled back; the monitor flow does it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sklearn.metrics import roc_auc_score

MIN_LABELLED_ROWS = 50  # fewer labelled rows (or one class only): no comparison yet
NO_PREVIOUS = "no previous champion"
TOO_FEW_LABELS = "not enough labelled rows yet"


class Comparison(BaseModel):
    """The champion's and the previous champion's AUC on the same labelled rows of the window."""

    champion_auc: float
    previous: str
    previous_auc: float


class Verification(BaseModel):
    """The verdict: ``pass``, ``violations remain``, ``roll back`` (to be done) or ``rolled back`` (done)."""

    champion: str
    earlier_violations: list[str]
    still_violated: list[str]
    labelled_rows: int | None = None
    comparison: Comparison | str
    rollback: dict[str, Any] | None = None  # the registry's answer once rolled back
    event_id: str | None = None
    verdict: str
    rollback_reason: str | None = Field(default=None, exclude=True)

    @property
    def needs_rollback(self) -> bool:
        return self.rollback_reason is not None and self.rollback is None

    def rolled_back(self, rollback: dict[str, Any], event_id: str | None) -> Verification:
        """The verdict once the previous champion is back."""
        return self.model_copy(update={"rollback": rollback, "event_id": event_id, "verdict": "rolled back"})

    def as_record(self) -> dict[str, Any]:
        """The ``verification`` entry of the window's JSON record (only the fields this verdict has)."""
        return self.model_dump(exclude_unset=True)


def replaced_champion_violations(records: Sequence[Mapping[str, Any]], champion: str) -> list[str] | None:
    """The violations of the last judged window when another champion was judged there, else None.

    Not None means this window is the new champion's first judged one: the one post-deploy verification reads.
    Violations sent to a person for review (``review``) did not lead to the new champion and are left out.
    """
    judged = [r for r in records if r.get("status") == "judged"]
    if not judged or judged[-1].get("champion") == champion:
        return None
    review = set(judged[-1].get("review", []))
    return [v for v in judged[-1].get("violations", []) if v not in review]


def _remaining(earlier: Sequence[str], violations: Sequence[str]) -> list[str]:
    return sorted(set(earlier) & set(violations))


def _verdict(still_violated: list[str]) -> str:
    return "pass" if not still_violated else "violations remain"


def uncompared(
    champion: str,
    earlier: Sequence[str],
    violations: Sequence[str],
    comparison: str,
    labelled_rows: int | None = None,
) -> Verification:
    """The verdict when the champions cannot be compared (no previous one, too few labels): violations only."""
    still = _remaining(earlier, violations)
    fields: dict[str, Any] = {} if labelled_rows is None else {"labelled_rows": labelled_rows}
    return Verification(
        champion=champion,
        earlier_violations=sorted(set(earlier)),
        still_violated=still,
        comparison=comparison,
        verdict=_verdict(still),
        **fields,
    )


def enough_labels(y: np.ndarray) -> bool:
    """Enough labelled rows, of both classes, to compare two models' AUC."""
    return len(y) >= MIN_LABELLED_ROWS and 0 < int(y.sum()) < len(y)


def compare(
    champion: str,
    earlier: Sequence[str],
    violations: Sequence[str],
    previous: str,
    y: np.ndarray,
    champion_scores: np.ndarray,
    previous_scores: np.ndarray,
    margin: float,
) -> Verification:
    """The new champion against ``previous`` on the same labelled rows: a roll back when it trails by > margin."""
    champion_auc = float(roc_auc_score(y, champion_scores))
    previous_auc = float(roc_auc_score(y, previous_scores))
    still = _remaining(earlier, violations)
    worse = champion_auc < previous_auc - margin
    reason = f"post-deploy: v{champion} AUC {champion_auc:.4f} < v{previous} {previous_auc:.4f} - {margin}"
    return Verification(
        champion=champion,
        earlier_violations=sorted(set(earlier)),
        still_violated=still,
        labelled_rows=len(y),
        comparison=Comparison(champion_auc=champion_auc, previous=previous, previous_auc=previous_auc),
        verdict="roll back" if worse else _verdict(still),
        rollback_reason=reason if worse else None,
    )
