"""A window staged in the lake for the Dask workers: its columns and scores read back as written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from closedloop import storage
from closedloop.contract import Contract
from closedloop.lake import Lake
from tasks.monitor import sources


def test_a_staged_window_keeps_the_features_and_scores_only(
    tmp_path: Path, contract: Contract, features: Callable[..., pd.DataFrame]
) -> None:
    lake = Lake.of(str(tmp_path), contract.name)
    frame = features(100, 3).assign(score=np.linspace(0, 1, 100), request_id="r")
    uri = sources.stage_window(lake, contract, frame)
    columns, scores = sources.staged_columns(uri, None)
    assert "request_id" not in columns and set(columns) == {*features(1, 0).columns, "score"}
    assert np.array_equal(scores, frame["score"].to_numpy())
    read = sources.read_columns(uri, ["income", "channel"], None)
    pd.testing.assert_frame_equal(read, frame[["income", "channel"]])
    storage.delete(uri)
    assert not storage.list_objects(storage.join(lake.root, sources.STAGING))
