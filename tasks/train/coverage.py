"""Feature coverage: which matured applications have the rows of every feature table at their time.

A point-in-time retrieval keeps every application and leaves a feature table's columns empty when the entity has
no row of that table within its ttl (the row was never sent, or it was quarantined). Such an application would
train and test the model with every feature and sensitive attribute of the table missing, so it is left out of
the training set and counted per table. A table's row is present when one of its retrieved columns the contract
marks as not nullable holds a value (ingest never stores a row without them); a table whose retrieved columns
are all nullable counts a row as present when any of them holds a value. Counted batch by batch, in Arrow.
"""

from __future__ import annotations

from functools import reduce

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from closedloop.contract import Contract


class FeatureCoverage(BaseModel):
    """How many matured applications had each feature table's rows at their time, and how many were left out."""

    model_config = ConfigDict(frozen=True)

    rows: int  # matured applications retrieved
    left_out: int  # without the rows of at least one table: not in the training set
    missing: dict[str, int]  # per feature table: applications without its rows
    coverage: dict[str, float]  # per feature table: the share of applications with its rows


def presence_columns(contract: Contract) -> dict[str, list[str]]:
    """Per feature table (neither the scored table nor the outcomes), the retrieved columns that mark its row.

    Retrieved: the table's model inputs and sensitive attributes. A table none of whose columns is retrieved
    is not counted.
    """
    markers: dict[str, list[str]] = {}
    for table in contract.tables:
        if table in (contract.prediction, contract.label.source):
            continue
        retrieved = [c for c in contract.columns_of(table) if c.is_model_input or c.sensitive]
        required = [c.name for c in retrieved if not c.nullable]
        if retrieved:
            markers[table] = required or [c.name for c in retrieved]
    return markers


class CoverageCounter:
    """Keeps the covered rows of each retrieved batch and counts, per table, the rows without its feature rows."""

    def __init__(self, markers: dict[str, list[str]]) -> None:
        self.markers = markers
        self.rows = 0
        self.left_out = 0
        self.missing = dict.fromkeys(markers, 0)

    def keep(self, batch: pa.Table) -> pa.Table:
        """The rows of ``batch`` that have every feature table's row; the others are counted."""
        self.rows += batch.num_rows
        covered: pa.ChunkedArray | None = None
        for table, columns in self.markers.items():
            absent = [c for c in columns if c not in batch.column_names]
            if absent:
                raise ValueError(f"the retrieval returned no column(s) {absent} of table {table!r}")
            present = reduce(pc.or_, [pc.invert(pc.is_null(batch[c], nan_is_null=True)) for c in columns])
            self.missing[table] += batch.num_rows - (pc.sum(present).as_py() or 0)
            covered = present if covered is None else pc.and_(covered, present)
        if covered is None:
            return batch
        kept = batch.filter(covered)
        self.left_out += batch.num_rows - kept.num_rows
        return kept

    def result(self) -> FeatureCoverage:
        """What was counted so far: rows, rows left out, and per table the rows missing and the share covered."""
        shares = {t: (self.rows - m) / self.rows if self.rows else 0.0 for t, m in self.missing.items()}
        return FeatureCoverage(rows=self.rows, left_out=self.left_out, missing=dict(self.missing), coverage=shares)
