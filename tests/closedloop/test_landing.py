"""Landing-zone batches: which table a file belongs to, its content address, and reading that never guesses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from one_table import GERMAN_CREDIT, german_credit

from closedloop import landing
from closedloop.contract import Contract, FileFormat, contract_at, parse_contract
from closedloop.landing import BatchRef, Chunk, UnusableBatch, batch_id, fetched, identify, read_batch, read_chunks
from closedloop.settings import PROJECT_ROOT

CONTRACT = contract_at(str(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml"))


@pytest.fixture
def sent(tmp_path: Path) -> Callable[[bytes], Path]:
    """A batch's bytes as the file the readers take."""

    def write(data: bytes) -> Path:
        path = tmp_path / f"sent-{hashlib.sha256(data).hexdigest()[:8]}"
        path.write_bytes(data)
        return path

    return write


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


def test_a_sent_file_is_a_private_copy_named_by_its_content(tmp_path: Path) -> None:
    landed = tmp_path / "applications-1.csv"
    landed.write_bytes(b"a,b\n1,2\n")
    with fetched(landed.as_uri()) as copy:
        landed.write_bytes(b"a,b\n9,9\n")  # the landing file changes while the batch is read
        assert copy.path.read_bytes() == b"a,b\n1,2\n" and copy.content_id == batch_id(b"a,b\n1,2\n")
    assert not copy.path.exists()


def test_csv_cells_stay_text_for_the_contract_to_type(sent: Callable[[bytes], Path]) -> None:
    frame = read_batch(
        sent(b"application_id,loan_amount\n1,0012.50\n2,\n"), BatchRef("x/applications/a.csv", "applications", "csv")
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
def test_an_unusable_batch_is_refused_with_its_reason(
    data: bytes, ref: BatchRef, message: str, sent: Callable[[bytes], Path]
) -> None:
    with pytest.raises(UnusableBatch) as caught:
        read_batch(sent(data), ref)
    assert message in str(caught.value)


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_a_ragged_csv_line_is_an_empty_row_named_by_its_line_number(
    quoted: bool, sent: Callable[[bytes], Path]
) -> None:
    first = '"a, quoted"' if quoted else "a"
    data = f"id,name\n1,{first}\n2,b,extra\n\n3\n4,d\n".encode()
    readout = read_batch(sent(data), BatchRef("x/applications/a.csv", "applications", "csv"))
    assert readout.frame["id"].tolist()[0::3] == ["1", "4"] and readout.frame.iloc[1:3].isna().all(axis=None)
    assert readout.unreadable == {
        1: "line 3: 3 field(s) where the header has 2",
        2: "line 5: 1 field(s) where the header has 2",
    }


def _rows_of(chunks: list[Chunk]) -> list[int]:
    return [int(r) for chunk in chunks for r in chunk.rows]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_large_batch_is_read_in_chunks_that_cover_every_row_once(fmt: str, tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [str(i) for i in range(10)], "v": [f"x{i}" for i in range(10)]})
    data = tmp_path / f"a.{fmt}"
    if fmt == "csv":
        frame.to_csv(data, index=False)
    else:
        frame.to_parquet(data, index=False)
    ref = BatchRef(f"file:///l/applications/a.{fmt}", "applications", fmt)
    chunks = list(read_chunks(data, ref, 4))
    assert [len(c.frame) for c in chunks] == [4, 4, 2] and _rows_of(chunks) == list(range(10))
    assert pd.concat([c.frame for c in chunks], ignore_index=True).equals(read_batch(data, ref).frame)
    assert len(list(read_chunks(data, ref, 10))) == 1  # a batch that fits is read in one piece


def test_ragged_lines_of_a_chunked_csv_come_last_with_their_line_numbers(sent: Callable[[bytes], Path]) -> None:
    data = sent(b"id,v\n" + b"".join(b"%d,x\n" % i if i != 3 else b"3,x,extra\n" for i in range(8)))
    ref = BatchRef("file:///l/applications/a.csv", "applications", "csv")
    chunks = list(read_chunks(data, ref, 3))
    assert _rows_of(chunks) == [0, 1, 2, 4, 5, 6, 7, 3]
    last = chunks[-1]
    assert last.unreadable == {0: "line 5: 3 field(s) where the header has 2"}
    assert last.frame.isna().all().all() and list(last.frame.columns) == ["id", "v"]


def test_a_chunked_csv_that_breaks_midway_is_refused_whole(sent: Callable[[bytes], Path]) -> None:
    data = sent(b"id;v\n" + b"1;x\n" * 10)
    ref = BatchRef("file:///l/applications/a.csv", "applications", "csv")
    with pytest.raises(UnusableBatch, match="delimited by ';'"):
        list(read_chunks(data, ref, 3))


@pytest.mark.parametrize("block", [5, 16, 1 << 20], ids=["tiny blocks", "small blocks", "one block"])
def test_a_csv_is_checked_block_by_block_with_the_same_verdicts(
    block: int, sent: Callable[[bytes], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines cut by a block boundary, a bad byte or a ragged line far into the file: the answer of one piece."""
    monkeypatch.setattr(landing, "BLOCK", block)
    ref = BatchRef("file:///l/applications/a.csv", "applications", "csv")
    lines = [b"id,name\r\n", *(b"%d,n%d\r\n" % (i, i) for i in range(40))]
    plain = read_batch(sent(b"".join(lines)), ref)
    assert len(plain.frame) == 40 and not plain.unreadable and plain.frame["name"].iloc[-1] == "n39"
    ragged = read_batch(sent(b"".join([*lines[:30], b"29,n,x\r\n", *lines[30:]])), ref)
    assert ragged.unreadable == {29: "line 31: 3 field(s) where the header has 2"} and len(ragged.frame) == 41
    chunks = list(read_chunks(sent(b"".join([*lines[:30], b"29,n,x\r\n", *lines[30:]])), ref, 7))
    assert sorted(_rows_of(chunks)) == list(range(41)) and chunks[-1].unreadable == {0: ragged.unreadable[29]}
    data = b"".join(lines) + "Genève\n".encode("latin-1")
    with pytest.raises(UnusableBatch, match=f"byte 0xe8 at offset {len(data) - 4}"):
        read_batch(sent(data), ref)


GERMAN = GERMAN_CREDIT / "german.data"


def _german_contract() -> Contract:
    """One table read from a header-less, blank-separated file (UCI's german.data), its format said outright."""
    doc = german_credit()
    doc["tables"]["applications"]["file"]["format"] = "csv"
    return parse_contract(doc)


GERMAN_FIELDS = _german_contract().tables["applications"].file.columns or []


def test_a_file_of_a_one_table_contract_belongs_to_that_table_in_the_contracts_format() -> None:
    ref = identify("file:///l/german.data", "file:///l", _german_contract())
    assert ref.table == "applications" and ref.file_format == "csv"  # the contract's format, not the extension
    assert ref.fmt is not None and ref.fmt.delimiter == "whitespace"
    assert identify("file:///l/x.csv", "file:///l", CONTRACT).table is None  # several tables: the name must say


def test_a_header_less_blank_separated_file_reads_as_its_named_columns(tmp_path: Path) -> None:
    ref = identify("file:///l/german.data", "file:///l", _german_contract())
    frame = read_batch(GERMAN, ref).frame
    assert list(frame.columns) == GERMAN_FIELDS and len(frame) == 1000  # no line taken for a header
    assert frame.iloc[0].tolist()[:5] == ["A11", "6", "A34", "A43", "1169"]
    assert frame["bad_credit"].value_counts().to_dict() == {"1": 700, "2": 300}
    assert landing.batch_columns(GERMAN, ref) == GERMAN_FIELDS
    chunks = list(read_chunks(GERMAN, ref, 300))
    assert len(chunks) == 4 and pd.concat([c.frame for c in chunks], ignore_index=True).equals(frame)
    assert _rows_of(chunks) == list(range(1000))


def test_blank_runs_tabs_and_trailing_blanks_separate_fields_and_ragged_lines_keep_their_numbers(
    sent: Callable[[bytes], Path],
) -> None:
    fmt = FileFormat(delimiter="whitespace", header=False, columns=["a", "b", "c"])
    ref = BatchRef("file:///l/t/x.txt", "applications", "csv", fmt)
    readout = read_batch(sent(b"1  2\t3 \n 4 5 6\n\n7 8\n9,9 10 11\n"), ref)
    assert readout.frame.iloc[[0, 1, 3]].to_numpy().tolist() == [["1", "2", "3"], ["4", "5", "6"], ["9,9", "10", "11"]]
    assert readout.unreadable == {2: "line 4: 2 field(s) where the header has 3"}  # the file's own line number


def test_another_delimiter_with_a_header_is_read_when_the_contract_names_it(sent: Callable[[bytes], Path]) -> None:
    data = sent(b'id;v\n1;"a;b"\n2;c\n')
    assert read_batch(data, BatchRef("a.csv", "applications", "csv", FileFormat(delimiter=";"))).frame.to_dict(
        "list"
    ) == {"id": ["1", "2"], "v": ["a;b", "c"]}
    with pytest.raises(UnusableBatch, match=r"delimited by ';'; set tables.applications.file.delimiter: ';'"):
        read_batch(data, BatchRef("a.csv", "applications", "csv"))


def test_a_normalised_file_that_is_not_utf8_is_refused_with_the_fix(sent: Callable[[bytes], Path]) -> None:
    fmt = FileFormat(delimiter="whitespace", header=False, columns=["a"])
    with pytest.raises(UnusableBatch, match=r"CSV is not UTF-8: byte 0xe8 \(re-export it as UTF-8\)"):
        read_batch(sent("Genève\n".encode("latin-1")), BatchRef("a.txt", "applications", "csv", fmt))


def test_the_work_folders_of_killed_processes_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = int(gone.stdout), os.getpid()
    for name in (f"closedloop-sent-{dead}-abc", f"closedloop-csv-{alive}-def", "closedloop-sent-x-y", "other-1-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "sent").write_bytes(b"a,b\n")
    assert landing.sweep_work_dirs(str(tmp_path)) == [f"closedloop-sent-{dead}-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"closedloop-csv-{alive}-def", "closedloop-sent-x-y", "other-1-2"]
    )
