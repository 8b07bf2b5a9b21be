"""The staged entity frame: one row group per segment, each read back alone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from closedloop import storage
from tasks.score import staging


def test_each_segment_is_one_row_group(tmp_path: Path) -> None:
    entities = pd.DataFrame({"application_id": range(10), "channel": ["online"] * 10})
    uri = staging.stage_entities(storage.join(str(tmp_path), "staged.parquet"), entities, 4, None)
    segments = [staging.read_segment(uri, i, None) for i in range(3)]
    assert [len(s) for s in segments] == [4, 4, 2]
    pd.testing.assert_frame_equal(pd.concat(segments, ignore_index=True), entities)
