"""Pure feature transformations shared by training (offline) and serving (online): one code path for both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from closedloop.contract import Aggregate, Ratio


def compute_ratios(inputs: pd.DataFrame, ratios: Sequence[Ratio]) -> pd.DataFrame:
    """Each ratio as numerator / denominator; a zero or missing denominator gives NaN, never inf."""
    inputs = inputs.loc[:, ~inputs.columns.duplicated()]
    out = {}
    for ratio in ratios:
        num = pd.to_numeric(inputs[ratio.numerator], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        den = pd.to_numeric(inputs[ratio.denominator], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        out[ratio.name] = ratio_values(num, den)
    return pd.DataFrame(out, index=inputs.index)


def ratio_values(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Numerator / denominator as float64; a zero or missing denominator gives NaN, never inf.

    The one definition of a ratio: :func:`compute_ratios` (Feast's on-demand view, training) and the scoring
    hot path (``tasks.score.scoring``) both call it.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        values = numerator / np.where(denominator != 0, denominator, np.nan)
    values[~np.isfinite(values)] = np.nan
    return values


def ratio_frame(inputs: pd.DataFrame, specs: Sequence[tuple[str, str, str]]) -> pd.DataFrame:
    """:func:`compute_ratios` from plain ``(name, numerator, denominator)`` triples (as Feast views store them)."""
    return compute_ratios(inputs, [Ratio(name=n, numerator=a, denominator=b) for n, a, b in specs])


def compute_aggregates(
    history: pd.DataFrame, aggregates: Sequence[Aggregate], key: str, event_time: str
) -> pd.DataFrame:
    """Per row: each aggregate over the entity's last ``window`` rows up to and including that row."""
    ordered = history.sort_values([key, event_time], kind="stable")
    grouped = ordered.groupby(key, sort=False)
    out = ordered[[key, event_time]].copy()
    for agg in aggregates:
        rolling = grouped[agg.column].rolling(agg.window, min_periods=1)
        values = getattr(rolling, agg.function)()
        out[agg.name] = values.reset_index(level=0, drop=True).astype("float64")
    return out.loc[history.index]
