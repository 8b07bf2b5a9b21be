"""Landing-zone batches: which table a file belongs to, its content address, and reading that never guesses."""

from __future__ import annotations

import pandas as pd
import pytest

from closedloop.contract import contract_at
from closedloop.landing import BatchRef, UnusableBatch, batch_id, identify, read_batch
from closedloop.settings import PROJECT_ROOT

CONTRACT = contract_at(str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))


def test_batch_ref_names_the_table_by_folder_or_prefix() -> None:
    assert identify("file:///l/credit_history/x.csv", "file:///l", CONTRACT) == BatchRef(
        "file:///l/credit_history/x.csv", "credit_history", "csv"
    )
    assert identify("file:///l/credit_history-2025-01-01.parquet", "file:///l", CONTRACT).table == "credit_history"
    assert identify("file:///l/other/x.csv", "file:///l", CONTRACT).table is None
    assert identify("file:///l/applications/x.xlsx", "file:///l", CONTRACT).file_format is None


def test_the_same_bytes_are_the_same_batch_whatever_their_name() -> None:
    assert batch_id(b"a,b\n1,2\n") == batch_id(b"a,b\n1,2\n")
    assert batch_id(b"a,b\n1,2\n") != batch_id(b"a,b\n1,3\n")
    assert len(batch_id(b"")) == 20


def test_csv_cells_stay_text_for_the_contract_to_type() -> None:
    frame = read_batch(
        b"application_id,loan_amount\n1,0012.50\n2,\n", BatchRef("x/applications/a.csv", "applications", "csv")
    ).frame
    assert frame["loan_amount"].tolist()[0] == "0012.50" and pd.isna(frame["loan_amount"].iloc[1])


@pytest.mark.parametrize(
    ("data", "ref", "message"),
    [
        (b"", BatchRef("a.csv", "applications", "csv"), "empty file (0 bytes)"),
        (b"x", BatchRef("loans-1.csv", None, "csv"), "cannot tell which table 'loans-1.csv' belongs to"),
        (b"x", BatchRef("applications.xlsx", "applications", None), "unsupported file type 'applications.xlsx'"),
        (b"a;b\n1;2\n", BatchRef("a.csv", "applications", "csv"), "the file is delimited by ';'"),
        ("a\nGenève\n".encode("latin-1"), BatchRef("a.csv", "applications", "csv"), "CSV is not UTF-8: byte 0xe8"),
        (b"PAR1 not really", BatchRef("a.parquet", "applications", "parquet"), "not a readable parquet file"),
    ],
    ids=["empty", "no table", "unknown kind", "delimiter", "encoding", "broken parquet"],
)
def test_an_unusable_batch_is_refused_with_its_reason(data: bytes, ref: BatchRef, message: str) -> None:
    with pytest.raises(UnusableBatch) as caught:
        read_batch(data, ref)
    assert message in str(caught.value)


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_a_ragged_csv_line_is_an_empty_row_named_by_its_line_number(quoted: bool) -> None:
    first = '"a, quoted"' if quoted else "a"
    data = f"id,name\n1,{first}\n2,b,extra\n\n3\n4,d\n".encode()
    readout = read_batch(data, BatchRef("x/applications/a.csv", "applications", "csv"))
    assert readout.frame["id"].tolist()[0::3] == ["1", "4"] and readout.frame.iloc[1:3].isna().all(axis=None)
    assert readout.unreadable == {
        1: "line 3: 3 field(s) where the header has 2",
        2: "line 5: 1 field(s) where the header has 2",
    }
