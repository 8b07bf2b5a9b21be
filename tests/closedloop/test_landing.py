"""Landing-zone batches: which table a file belongs to, its content address, and reading that never guesses."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from closedloop.contract import contract_at
from closedloop.landing import BatchRef, Chunk, UnusableBatch, batch_id, identify, read_batch, read_chunks
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


def _rows_of(chunks: list[Chunk]) -> list[int]:
    return [int(r) for chunk in chunks for r in chunk.rows]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_large_batch_is_read_in_chunks_that_cover_every_row_once(fmt: str) -> None:
    frame = pd.DataFrame({"id": [str(i) for i in range(10)], "v": [f"x{i}" for i in range(10)]})
    if fmt == "csv":
        data = frame.to_csv(index=False).encode()
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    ref = BatchRef(f"file:///l/applications/a.{fmt}", "applications", fmt)
    chunks = list(read_chunks(data, ref, 4))
    assert [len(c.frame) for c in chunks] == [4, 4, 2] and _rows_of(chunks) == list(range(10))
    assert pd.concat([c.frame for c in chunks], ignore_index=True).equals(read_batch(data, ref).frame)
    assert len(list(read_chunks(data, ref, 10))) == 1  # a batch that fits is read in one piece


def test_ragged_lines_of_a_chunked_csv_come_last_with_their_line_numbers() -> None:
    data = b"id,v\n" + b"".join(b"%d,x\n" % i if i != 3 else b"3,x,extra\n" for i in range(8))
    ref = BatchRef("file:///l/applications/a.csv", "applications", "csv")
    chunks = list(read_chunks(data, ref, 3))
    assert _rows_of(chunks) == [0, 1, 2, 4, 5, 6, 7, 3]
    last = chunks[-1]
    assert last.unreadable == {0: "line 5: 3 field(s) where the header has 2"}
    assert last.frame.isna().all().all() and list(last.frame.columns) == ["id", "v"]


def test_a_chunked_csv_that_breaks_midway_is_refused_whole() -> None:
    data = b"id;v\n" + b"1;x\n" * 10
    ref = BatchRef("file:///l/applications/a.csv", "applications", "csv")
    with pytest.raises(UnusableBatch, match="delimited by ';'"):
        list(read_chunks(data, ref, 3))
