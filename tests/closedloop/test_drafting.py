from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from flat_table import write_flat_table

from closedloop import drafting
from closedloop.contract import parse_contract
from closedloop.drafting import DraftError, draft_contract, identifier

REPO = Path(__file__).resolve().parents[2]
GERMAN = REPO / "datasets/german_credit/german.data"


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flat_table(tmp_path_factory.mktemp("flat") / "cs-training.csv")


@pytest.fixture(scope="module")
def draft(flat: Path) -> drafting.Draft:
    return draft_contract([flat], label="SeriousDlqin2yrs", sensitive=["age", "CODE_GENDER", "DAYS_BIRTH"])


def _column(contract: dict, name: str) -> dict:
    return next(c for c in contract["columns"] if c["name"] == name)


def test_headers_become_identifiers() -> None:
    assert identifier("NumberOfTime30-59DaysPastDueNotWorse") == "number_of_time30_59_days_past_due_not_worse"
    assert identifier("RevolvingUtilizationOfUnsecuredLines") == "revolving_utilization_of_unsecured_lines"
    assert identifier("default.payment.next.month") == "default_payment_next_month"
    assert identifier("DAYS_BIRTH") == "days_birth" and identifier("LIMIT_BAL") == "limit_bal"
    assert identifier("3rd party") == "c_3rd_party"
    long = identifier("A" * 40 + "b" * 40)
    assert len(long) <= 63 and long != identifier("A" * 40 + "b" * 41)


def test_flat_table_is_drafted_with_every_trait(draft: drafting.Draft) -> None:
    c = draft.contract
    table = c["tables"]["applications"]
    fmt = table["file"]
    assert fmt["delimiter"] == "," and fmt["header"] is True
    assert fmt["ignore"] == [""]  # the unnamed row index is dropped, not used as the key
    assert fmt["headers"]["number_of_time30_59_days_past_due_not_worse"] == "NumberOfTime30-59DaysPastDueNotWorse"
    assert fmt["headers"]["serious_dlqin2yrs"] == "SeriousDlqin2yrs"
    assert fmt["headers"]["region_code"] == "Region.Code"
    assert "age" not in fmt["headers"]  # only headers that differ from their name
    assert table["generated_key"] == "row_id" and table["primary_key"] == ["row_id"]
    assert c["entity"]["join_key"] == "row_id" and c["key_type"] == "int"
    assert table["as_of"] == "ingest" and "event_time" not in table and c["time_ordered"] is False
    assert c["null_tokens"] == ["NA"]  # found in two columns: a data-set token
    assert _column(c, "monthly_income")["nullable"] is True
    assert _column(c, "number_of_dependents")["type"] == "int"
    late = _column(c, "number_of_time30_59_days_past_due_not_worse")
    assert late["missing_codes"] == [96, 98] and late["nullable"] is True and late["max"] == 5
    employed = _column(c, "days_employed")
    assert employed["missing_codes"] == [365243] and employed["max"] == 0
    assert c["label"] == {
        "column": "serious_dlqin2yrs",
        "source": "applications",
        "positive": 1,
        "negative": 0,
        "delay_days": 0,
    }
    assert c["prediction"] == "applications"
    names = [col["name"] for col in c["columns"]]
    assert "serious_dlqin2yrs" not in names and "row_id" not in names and "" not in names


def test_sensitive_columns_get_bands_and_suggestions_are_not_set(draft: drafting.Draft) -> None:
    c = draft.contract
    age = _column(c, "age")
    assert age["sensitive"] is True and age["bands"] == [18, 25, 35, 50, 65, 101] and age["group_thresholds"]
    assert _column(c, "code_gender") == {
        "name": "code_gender",
        "type": "category",
        "categories": ["F", "M"],
        "sensitive": True,
    }
    years = _column(c, "age_years")  # an age derived from the negative day count, judged as sensitive
    assert years["formula"] == "-days_birth / 365.25" and years["sensitive"] is True and years["bands"][0] <= 21
    assert _column(c, "days_birth")["exclude"]
    assert _column(c, "employed_years")["formula"] == "-days_employed / 365.25"
    marital = _column(c, "marital_status")
    assert "sensitive" not in marital and marital["categories"] == ["divorced", "married", "single", "widowed"]
    checks = {(f.field, f.check) for f in draft.checks}
    assert any(f == "columns.marital_status" and "protected attribute" in (t or "") for f, t in checks)
    assert any(f == "columns.region_code" and "proxy" in (t or "") for f, t in checks)
    assert any(f == "columns.number_of_time30_59_days_past_due_not_worse" and "96" in (t or "") for f, t in checks)


def test_draft_text_is_the_contract_with_checks_and_parses(draft: drafting.Draft) -> None:
    assert yaml.safe_load(draft.text) == draft.contract
    assert "# CHECK: number_of_time30_59_days_past_due_not_worse: 96 (" in draft.text
    assert "as_of: ingest   # CHECK:" in draft.text
    contract = parse_contract(yaml.safe_load(draft.text), origin="draft")
    assert {c.name for c in contract.sensitive} == {"age", "code_gender", "age_years"}
    assert "days_birth" not in {c.name for c in contract.model_inputs}


def test_german_credit_raw_file_drafts_a_headerless_whitespace_contract() -> None:
    if not GERMAN.exists():
        pytest.skip(f"{GERMAN} not present")
    draft = draft_contract([GERMAN], label="col_21", sensitive=["col_13", "col_20"])
    c = draft.contract
    fmt = c["tables"]["applications"]["file"]
    assert fmt["delimiter"] == "whitespace" and fmt["header"] is False
    assert fmt["columns"] == [f"col_{i}" for i in range(1, 22)]
    assert draft.rows == draft.rows_profiled == 1000
    assert c["label"]["positive"] == 2 and c["label"]["negative"] == 1  # bad credit is the 30% minority
    checking = _column(c, "col_1")
    assert checking["categories"] == ["A11", "A12", "A13", "A14"] and checking["codes"]["A11"] == "A11"
    assert _column(c, "col_2") == {"name": "col_2", "type": "int", "min": 0, "max": 100}
    assert _column(c, "col_20")["sensitive"] is True
    assert "# CHECK: col_1: coded values" in draft.text
    assert yaml.safe_load(draft.text) == c
    parse_contract(c, origin="german")


def test_large_file_is_profiled_on_a_bounded_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drafting, "WHOLE_FILE_ROWS", 400)
    monkeypatch.setattr(drafting, "HEAD_ROWS", 100)
    monkeypatch.setattr(drafting, "SAMPLE_ROWS", 100)
    path = write_flat_table(tmp_path / "big.csv", rows=1500)
    draft = draft_contract([path], label="SeriousDlqin2yrs")
    assert draft.rows == 1500 and draft.rows_profiled == 200
    assert draft.contract["tables"]["applications"]["file"]["ignore"] == [""]  # the index, seen through a sample
    assert "(1,500 rows, 200 rows profiled)" in draft.text


def test_several_files_of_one_table_are_profiled_together(tmp_path: Path) -> None:
    first = write_flat_table(tmp_path / "a.csv", rows=300, seed=1)
    second = write_flat_table(tmp_path / "b.csv", rows=300, seed=2)
    draft = draft_contract([first, second], label="SeriousDlqin2yrs")
    assert draft.rows == 600


def test_time_and_id_columns_are_used_when_present(tmp_path: Path) -> None:
    path = tmp_path / "loans.csv"
    rng = random.Random(3)  # noqa: S311 - reproducible test data
    lines = ["LoanId;AppliedAt;Amount;Defaulted"]
    lines += [
        f"L{i:05d};2024-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00Z;{rng.randint(100, 900)};{int(rng.random() < 0.2)}"
        for i in range(200)
    ]
    path.write_text("\n".join(lines) + "\n")
    c = draft_contract([path], label="Defaulted", id_column="LoanId").contract
    table = c["tables"]["applications"]
    assert table["file"]["delimiter"] == ";"
    assert table["event_time"] == "applied_at" and "as_of" not in table and c["time_ordered"] is True
    assert table["primary_key"] == ["loan_id"] and "generated_key" not in table and c["key_type"] == "string"
    assert c["start"].isoformat() == "2024-01-01T00:00:00+00:00"
    parse_contract(c, origin="loans")


def test_small_traits(tmp_path: Path) -> None:
    path = tmp_path / "small.tsv"
    lines = ["Applied\tNote\tBranch\tScore\tFlag\tDefault"]
    lines += [
        f"2024-03-{1 + i % 28:02d}\tnote {i}\tmain\t{i % 7}\t{'true' if i % 3 else 'false'}\t{'' if i < 10 else i % 2}"
        for i in range(120)
    ]
    path.write_text("\n".join(lines) + "\n")
    draft = draft_contract([path], label="Default")
    c = draft.contract
    fmt = c["tables"]["applications"]["file"]
    assert fmt["delimiter"] == "\t" and fmt["ignore"] == ["Note"]  # free text is read and dropped
    assert c["tables"]["applications"]["event_time"] == "applied"
    assert _column(c, "branch")["exclude"] == "constant" and _column(c, "flag")["type"] == "bool"
    checks = {f.field: f.check for f in draft.checks}
    assert "no timezone" in (checks["tables.applications.event_time"] or "")
    assert any(f.field == "label" and "10 rows without a label" in f.inferred for f in draft.findings)


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        ("a,b\n1,2\n3,4\n", {"label": "c"}, "label column 'c' is not in the file (its columns: a, b)"),
        ("a,b\n1,2\n3,5\n4,7\n", {"label": "b"}, "label column 'b' has 3 distinct values"),
        ("a,b\n1,yes\n3,no\n4,maybe\n", {"label": "b"}, "or write the label as 1 (the outcome to predict) and 0"),
        (
            "a,b\n1,0\n3,1\n",
            {"label": "b", "sensitive": ["a"]},
            "no column is left as a model input besides the label 'b' (looked at a (sensitive))",
        ),
        ("a,b,id\n1,0,7\n3,1,7\n", {"label": "b", "id_column": "id"}, "id column 'id' repeats values"),
        ("", {"label": "b"}, "the file is empty"),
    ],
)
def test_unusable_input_is_named(tmp_path: Path, content: str, options: dict, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(content)
    with pytest.raises(DraftError) as err:
        draft_contract([path], **options)
    assert message in str(err.value) and str(path) in str(err.value)
