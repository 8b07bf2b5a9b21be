"""A wide synthetic table and its contract: the shared input of the validation and drift benchmarks."""

from __future__ import annotations

from typing import Any


def wide_contract(columns: int) -> Any:
    """A contract of ``columns`` feature columns (a third each float, int, category) on one table."""
    from closedloop.contract import parse_contract

    cols: list[dict[str, Any]] = []
    for i in range(columns):
        kind = ("float", "int", "category")[i % 3]
        col: dict[str, Any] = {"name": f"c{i}", "type": kind, "source": "events"}
        if kind == "category":
            col["categories"] = ["a", "b", "c", "d"]
        else:
            col.update(min=0, max=1000)
        cols.append(col)
    return parse_contract(
        {
            "name": "bench",
            "version": 1,
            "start": "2020-01-01T00:00:00Z",
            "entity": {"name": "customer", "join_key": "customer_id"},
            "tables": {
                "events": {"event_time": "event_at", "primary_key": ["event_id"]},
                "outcomes": {"event_time": "observed_at", "primary_key": ["event_id"]},
            },
            "prediction": "events",
            "label": {"column": "y", "source": "outcomes", "delay_days": 1},
            "decision": {"cost_false_negative": 1, "cost_false_positive": 1},
            "columns": cols,
        }
    )


def wide_frame(rows: int, columns: int, bad_share: float) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    data: dict[str, Any] = {
        "customer_id": rng.integers(1, rows, rows),
        "event_id": np.arange(rows),
        "event_at": pd.Series(
            pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400 * 365, rows), unit="s")
        ).astype("datetime64[us, UTC]"),
    }
    for i in range(columns):
        kind = ("float", "int", "category")[i % 3]
        if kind == "float":
            data[f"c{i}"] = rng.random(rows) * 1000
        elif kind == "int":
            data[f"c{i}"] = rng.integers(0, 1000, rows)
        else:
            data[f"c{i}"] = np.array(["a", "b", "c", "d"], dtype=object)[rng.integers(0, 4, rows)]
    frame = pd.DataFrame(data)
    bad = rng.random(rows) < bad_share
    frame.loc[bad, "c0"] = -1.0  # out of range
    return frame
