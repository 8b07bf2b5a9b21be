"""`contract init` on flat exports it has not seen: each generated file is drafted, its draft checked, then ingested.

Every case is a small Kaggle-like file with one trait (a delimiter, an encoding detail, awkward headers, a kind of
value, a label written as text, parquet). The draft must parse as a contract and its file must pass ingest's reading
and validation (the functions ``closedloop ingest`` runs, without the lake), or init must refuse in one line that
names the file and the fix.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from closedloop.contract import Contract, parse_contract
from closedloop.drafting import Draft, DraftError, draft_contract
from closedloop.landing import identify, read_batch
from tasks.ingest.batch import validate_sourced

NOW = datetime(2026, 1, 15, tzinfo=UTC)
ROWS = 120
HEADERS = ["Age", "Income", "Purpose", "Term", "Score", "Default"]


def _rows(seed: int = 1) -> list[list[str]]:
    """ROWS applicants as text cells: age, income, purpose, term, score and a 0/1 default (about 25% ones)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data
    return [
        [
            str(rng.randint(21, 70)),
            f"{rng.uniform(900, 9000):.2f}",
            rng.choice(["car", "home", "other"]),
            str(rng.choice([12, 24, 36])),
            f"{rng.random():.3f}",
            str(int(i % 4 == 0)),
        ]
        for i in range(ROWS)
    ]


def _with(
    column: str, values: Callable[[int], str], at: int | None = None
) -> Callable[[list[str], list[list[str]]], None]:
    """A change that adds (or, with ``at``, replaces) a column whose cell in row ``i`` is ``values(i)``."""

    def change(headers: list[str], rows: list[list[str]]) -> None:
        if at is None:
            headers.append(column)
            for i, row in enumerate(rows):
                row.append(values(i))
        else:
            headers[at] = column
            for i, row in enumerate(rows):
                row[at] = values(i)

    return change


@dataclass
class Case:
    """A file written with some traits, init's options, and what must come of it."""

    changes: list[Callable[[list[str], list[list[str]]], None]] = field(default_factory=list)
    delimiter: str = ","
    quote_headers: bool = False
    bom: bool = False
    crlf: bool = False
    parquet: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    refused: str | None = None  # init refuses, with this in its one-line message
    checks: tuple[str, ...] = ()  # text of findings a person must check
    stored: dict[str, Any] = field(default_factory=dict)  # contract facts to assert (path -> value)
    rejected: str | None = None  # every row is rejected at ingest with this reason (the CHECK line said why)
    ingest: bool = True  # False: drafted and checked only (validating 300 columns is GX's 10 s, not the draft's)
    blocked: str | None = None  # what closedloop lacks for this file to pass ingest (a strict xfail until then)

    def write(self, folder: Path) -> Path:
        headers, rows = list(HEADERS), _rows()
        for change in self.changes:
            change(headers, rows)
        if self.parquet:
            path = folder / "export.parquet"
            frame = pd.DataFrame(rows, columns=headers).replace("", None)
            typed = {
                h: pd.to_numeric(frame[h]) if h in ("Age", "Income", "Term", "Score") else frame[h] for h in headers
            }
            pd.DataFrame(typed).to_parquet(path, index=False)
            return path
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.delimiter, lineterminator="\r\n" if self.crlf else "\n")
        if self.quote_headers:
            out.write(self.delimiter.join(f'"{h}"' for h in headers) + ("\r\n" if self.crlf else "\n"))
        else:
            writer.writerow(headers)
        writer.writerows(rows)
        path = folder / "export.csv"
        path.write_bytes(("\ufeff" if self.bom else "").encode() + out.getvalue().encode())
        return path


def _only_header(headers: list[str], rows: list[list[str]]) -> None:
    rows.clear()


def _wide(headers: list[str], rows: list[list[str]]) -> None:
    for j in range(294):
        _with(f"feature_{j:03d}", lambda i, j=j: str((i * 7 + j) % 13))(headers, rows)


CASES = {
    "comma": Case(stored={"label.positive": 1, "file.delimiter": ","}),
    "semicolon, decimal commas": Case(
        delimiter=";",
        changes=[_with("Rate", lambda i: f"{i % 9},{i % 7}5")],
        checks=("numbers with a decimal comma such as '0,05'",),
        stored={"file.delimiter": ";", "file.ignore": ["Rate"]},
    ),
    "tab": Case(delimiter="\t", stored={"file.delimiter": "\t"}),
    "quoted headers, BOM, CRLF": Case(quote_headers=True, bom=True, crlf=True, stored={"file.headers.age": "Age"}),
    "headers with spaces, dots, parentheses, non-ASCII": Case(
        changes=[
            _with("Annual Income ($)", lambda i: str(1000 + i), at=1),
            _with("credit.score", lambda i: str(i % 50), at=4),
            _with("Âge", lambda i: str(20 + i % 50), at=0),
            _with("Größe (cm)", lambda i: str(150 + i % 40)),
            _with("# of loans", lambda i: str(i % 3)),
        ],
        stored={
            "file.headers.annual_income": "Annual Income ($)",
            "file.headers.credit_score": "credit.score",
            "file.headers.age": "Âge",
            "file.headers.groe_cm": "Größe (cm)",
            "file.headers.of_loans": "# of loans",
        },
    ),
    "a constant and an all-empty column": Case(
        changes=[_with("Branch", lambda i: "main"), _with("Notes", lambda i: "")],
        stored={"column.branch.exclude": "constant", "column.notes.exclude": "empty"},
    ),
    "percent and currency strings": Case(
        changes=[_with("Rate", lambda i: f"{i % 30}%"), _with("Amount", lambda i: f"${1 + i % 9},{i % 10}00")],
        checks=("percentages such as '0%'", "amounts with a currency sign or thousands separators such as '$1,000'"),
        stored={"file.ignore": ["Rate", "Amount"]},
    ),
    "ISO times with an offset as --time": Case(
        changes=[_with("Applied At", lambda i: f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T09:30:00+01:00")],
        options={"time_column": "Applied At"},
        stored={"table.event_time": "applied_at", "time_ordered": True},
    ),
    "ISO dates without a timezone as --time": Case(
        changes=[_with("Date", lambda i: f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}")],
        options={"time_column": "Date"},
        checks=("Date has no timezone: closedloop refuses naive times",),
        rejected="timestamp without timezone",
    ),
    "dd/mm/yyyy dates as --time": Case(
        changes=[_with("Date", lambda i: f"{1 + i % 28:02d}/{1 + i % 12:02d}/2024")],
        options={"time_column": "Date"},
        refused="time column 'Date' holds dates such as '01/01/2024', which are not ISO 8601",
    ),
    "dd/mm/yyyy dates not used": Case(
        changes=[_with("Opened", lambda i: f"{1 + i % 28:02d}/{1 + i % 12:02d}/2024")],
        checks=("dates such as '01/01/2024': to order rows by it, re-export it in ISO 8601",),
        stored={"file.ignore": ["Opened"], "table.as_of": "ingest"},
    ),
    "a column named event_time": Case(
        changes=[_with("event_time", lambda i: str(1700000000 + i))],
        stored={"table.event_time": "ingested_at", "table.as_of": "ingest"},
    ),
    "a label with empty cells": Case(
        changes=[_with("Default", lambda i: "" if i % 10 == 3 else str(int(i % 4 == 0)), at=5)],
        stored={"label.positive": 1},
    ),
    "a label with NA": Case(
        changes=[
            _with("Default", lambda i: "NA" if i % 10 == 3 else str(int(i % 4 == 0)), at=5),
            _with("Income", lambda i: "NA" if i % 10 == 5 else str(1000 + i), at=1),
        ],
        stored={"null_tokens": ["NA"]},
    ),
    "300 columns": Case(changes=[_wide], stored={"inputs": 299}, ingest=False),
    "only a header": Case(changes=[_only_header], refused="only a header row, no data"),
    "duplicate headers": Case(
        changes=[_with("Income", lambda i: str(i))], refused="columns 2 and 7 are both headed 'Income'"
    ),
    "parquet": Case(parquet=True, stored={"file.format": "parquet", "label.positive": 1}),
}
TEXT_LABELS = {  # the file's values for 1 and 0, and why the first is the outcome to predict
    "bad/good": ("bad", "good", "its name says a bad outcome"),
    "yes/no": ("yes", "no", "its name says a bad outcome"),
    "Y/N": ("Y", "N", "its name says a bad outcome"),
    "default/paid": ("default", "paid", "its name says a bad outcome"),
    "Approved/Other": ("Other", "Approved", "'Approved' names the good outcome"),
    "rarer of two unnamed": ("B", "A", "it is the rarer value"),
}
for key, (one, zero, _) in TEXT_LABELS.items():
    CASES[f"label {key}"] = Case(
        changes=[_with("Default", lambda i, one=one, zero=zero: one if i % 4 == 0 else zero, at=5)],
        stored={"label.codes": {one: 1, zero: 0}, "label.positive": 1, "label.negative": 0},
    )


def _fact(draft: Draft, path: str) -> Any:
    """A fact of the draft by a dotted path: ``table.*``, ``file.*``, ``column.<name>.*``, any top-level field."""
    contract = draft.contract
    table = contract["tables"]["applications"]
    node: Any = {
        **contract,
        "table": table,
        "file": table["file"],
        "column": {c["name"]: c for c in contract["columns"]},
        "inputs": sum(not c.get("exclude") and not c.get("sensitive") for c in contract["columns"]),
    }
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _ingested(path: Path, contract: Contract) -> Any:
    ref = identify(path.as_uri(), path.parent.as_uri(), contract)
    readout = read_batch(path, ref)
    rows = np.arange(len(readout.frame), dtype=np.int64)
    validated, _ = validate_sourced(readout.frame, readout.unreadable, rows, contract, ref.table or "", "b1", NOW)
    return validated


@pytest.mark.parametrize("key", TEXT_LABELS)
def test_a_text_label_is_read_as_1_and_0_with_a_check_that_says_why_and_how_to_swap(key: str, tmp_path: Path) -> None:
    one, zero, why = TEXT_LABELS[key]
    draft = draft_contract([CASES[f"label {key}"].write(tmp_path)], label="Default")
    assert draft.contract["label"]["codes"] == {one: 1, zero: 0}
    check = next(f.check for f in draft.findings if f.field == "label.positive")
    assert (
        check
        == f"{one!r} chosen as the outcome to predict because {why}: to predict {zero!r}, swap 1 and 0 in label.codes"
    )
    assert "# CHECK: the file value read as 1 is the outcome to predict" in draft.text


PARAMS = [
    pytest.param(case, id=key, marks=[pytest.mark.xfail(strict=True, reason=case.blocked)] if case.blocked else [])
    for key, case in CASES.items()
]


@pytest.mark.parametrize("case", PARAMS)
def test_an_export_is_drafted_checked_and_ingested_or_refused_in_one_line(case: Case, tmp_path: Path) -> None:
    path = case.write(tmp_path)
    if case.refused:
        with pytest.raises(DraftError) as exc:
            draft_contract([path], label="Default", **case.options)
        message = str(exc.value)
        assert message.startswith(f"{path}: ") and case.refused in message and "\n" not in message
        return
    draft = draft_contract([path], label="Default", **case.options)
    for path_, value in case.stored.items():
        assert _fact(draft, path_) == value, path_
    for text in case.checks:
        assert any(text in f"{f.inferred} {f.check}" for f in draft.findings), text
    contract = parse_contract(yaml.safe_load(draft.text), origin="draft")  # what `contract check` runs
    if not case.ingest:
        return
    validated = _ingested(path, contract)
    if case.rejected:  # the CHECK line said why: the whole batch is held, each row with its reason
        assert validated.accepted.empty and validated.batch_error
        assert case.rejected in validated.rejected["_reasons"].iloc[0]
    else:
        assert validated.batch_error is None
        assert len(validated.accepted) == ROWS and validated.rejected.empty, validated.rejected["_reasons"].head()
