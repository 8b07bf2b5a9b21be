"""The entity frame of a batch, staged in the lake with one parquet row group per segment.

A subflow's parameters are recorded by Prefect and a Dask worker opens URIs, so segments travel as a URI and a
row-group number, never as a frame.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop import storage


def stage_entities(uri: str, entities: pd.DataFrame, segment_rows: int, endpoint_url: str | None) -> str:
    """Write the entity frame, ``segment_rows`` rows per row group; returns its URI."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(entities, preserve_index=False), buffer, row_group_size=segment_rows)
    return storage.write_bytes(uri, buffer.getvalue(), endpoint_url)


def read_segment(uri: str, segment: int, endpoint_url: str | None) -> pd.DataFrame:
    """Row group ``segment`` of a staged entity frame."""
    staged = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri, endpoint_url)))
    return staged.read_row_group(segment).to_pandas()
