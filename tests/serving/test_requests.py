"""The request schemas under generated bodies, on the served champion: a valid request is never a 5xx, and a
malformed one (wrong type, non-finite number, integer past int64 or float64, unknown field, missing field) is a
422 whose detail names the field, in a single request as in a batch.

Strategies are read off the schema the service generates from the contract (``serving.requests.request_model``),
so they follow the contract's types, bounds and categories.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from closedloop.contract import load_contract
from closedloop.settings import PROJECT_ROOT
from serving.app import MAX_BODY_BYTES, create_app
from serving.requests import INT64_MAX, INT64_MIN, MAX_BATCH, request_model

pytestmark = pytest.mark.integration

CONTRACT = load_contract(PROJECT_ROOT / "datasets/credit_synthetic/contract.yaml")
SCHEMA = request_model(CONTRACT)
KEY = CONTRACT.entity.join_key
FIELDS = SCHEMA.model_fields
RAW = "@@raw-json@@"  # where a value JSON cannot carry as a Python value (1e309) is spliced into the text
# bounded: each property costs a second or two on the served app; no example database on disk
BOUNDED = settings(max_examples=40, deadline=None, database=None)


@pytest.fixture(scope="module")
def http(served: dict[str, Any]) -> Iterator[TestClient]:
    """One app on the package's served champion for the whole module: no request here changes its state."""
    with TestClient(create_app(served["settings"], CONTRACT, served["token"])) as client:
        yield client


def _kinds(field: FieldInfo) -> tuple[list[Any], bool]:
    """The field's types without None, and whether it may be null."""
    kind = field.annotation
    if get_origin(kind) in (Union, UnionType):
        args = get_args(kind)
        return [a for a in args if a is not NoneType], NoneType in args
    return [kind], False


def _bound(field: FieldInfo, constraint: type, default: Any) -> Any:
    found = [m for m in field.metadata if isinstance(m, constraint)]
    return getattr(found[0], constraint.__name__.lower()) if found else default


def _valid(field: FieldInfo) -> st.SearchStrategy[Any]:
    """Values the schema accepts for ``field``: its categories, or numbers within its bounds."""
    kinds, nullable = _kinds(field)
    options: list[st.SearchStrategy[Any]] = [st.none()] if nullable else []
    for kind in kinds:
        if get_origin(kind) is Literal:
            options.append(st.sampled_from(get_args(kind)))
        elif kind is bool:
            options.append(st.booleans())
        elif kind is int:
            low, high = _bound(field, annotated_types.Ge, INT64_MIN), _bound(field, annotated_types.Le, INT64_MAX)
            options.append(st.integers(int(low), int(high)))
        elif kind is float:
            low, high = _bound(field, annotated_types.Ge, None), _bound(field, annotated_types.Le, None)
            options.append(st.floats(low, high, allow_nan=False, allow_infinity=False))
        else:
            assert kind is str, f"{kind}: no strategy for this field type"
            options.append(st.text(max_size=20))
    return st.one_of(options)


def _takes_text(name: str) -> bool:
    return str in _kinds(FIELDS[name])[0]


def _numeric(name: str) -> bool:
    return any(k in (int, float) for k in _kinds(FIELDS[name])[0])


@st.composite
def applications(draw: st.DrawFn, keys: st.SearchStrategy[int]) -> dict[str, Any]:
    """A valid application: every required field, some of the optional ones, a key from ``keys``."""
    body = {KEY: draw(keys)}
    for name, field in FIELDS.items():
        if name != KEY and (field.is_required() or draw(st.booleans())):
            body[name] = draw(_valid(field))
    return body


def _wrong_type(name: str) -> st.SearchStrategy[Any]:
    containers = st.lists(st.integers(0, 9), max_size=3) | st.dictionaries(st.sampled_from("ab"), st.integers())
    if _takes_text(name):
        return containers
    # text that is no number, category, file code or null token of any column
    return containers | st.text(string.ascii_letters, min_size=1, max_size=8).map(lambda s: f"x-{s}")


def _huge(name: str) -> st.SearchStrategy[int]:
    """Integers past what the field holds: int64 for an integer or a key, float64 for a number or a category."""
    if int in _kinds(FIELDS[name])[0]:
        return st.integers(INT64_MAX + 1, 10**40) | st.integers(-(10**40), INT64_MIN - 1)
    return st.integers(2**1024, 10**400) | st.integers(-(10**400), -(2**1024))


FAULTS = ("wrong type", "non-finite", "huge", "unknown", "missing")


@st.composite
def malformed(draw: st.DrawFn, fault: str, name: str) -> tuple[dict[str, Any], str]:
    """A valid application with ``fault`` in field ``name``: (the body, the raw JSON that replaces RAW in it)."""
    body = draw(applications(st.integers(INT64_MIN, INT64_MAX)))
    raw = ""
    if fault == "unknown":
        body[name] = draw(st.none() | st.integers() | st.text(max_size=5))
    elif fault == "missing":
        del body[name]
    elif fault == "wrong type":
        body[name] = draw(_wrong_type(name))
    elif fault == "huge":
        body[name] = draw(_huge(name))
    else:  # JSON's non-finite constants, and literals past float64 that Python reads as infinity
        body[name], raw = RAW, draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e309", "-2.5e400"]))
    return body, raw


def _targets(fault: str, data: st.DataObject) -> list[str]:
    """The fields to break: every one (every required one when leaving it out), or a drawn unknown name."""
    if fault == "unknown":
        unknown = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).filter(lambda n: n not in FIELDS)
        return [data.draw(unknown)]
    return [n for n, f in FIELDS.items() if f.is_required() or fault != "missing"]


def _post(http: TestClient, token: str, path: str, body: Any, raw: str = "") -> Any:
    text = json.dumps(body).replace(json.dumps(RAW), raw) if raw else json.dumps(body)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return http.post(path, content=text, headers=headers)


@BOUNDED
@given(data=st.data())
def test_generated_valid_requests_are_scored_or_named_unknown(
    http: TestClient, served: dict[str, Any], data: st.DataObject
) -> None:
    keys = st.sampled_from(served["customers"]) | st.integers(INT64_MIN, INT64_MAX)
    batch = data.draw(st.lists(applications(keys), min_size=1, max_size=3))
    single = _post(http, served["token"], "/v1/score", batch[0])
    assert single.status_code in (200, 404), single.text
    if single.status_code == 404:
        assert str(batch[0][KEY]) in single.json()["detail"]
    many = _post(http, served["token"], "/v1/score/batch", {"applications": batch})
    assert many.status_code in (200, 404), many.text


@BOUNDED
@given(fault=st.sampled_from(FAULTS), data=st.data())
def test_generated_malformed_requests_are_422_naming_the_field(
    http: TestClient, served: dict[str, Any], fault: str, data: st.DataObject
) -> None:
    for name in _targets(fault, data):
        body, raw = data.draw(malformed(fault, name))
        single = _post(http, served["token"], "/v1/score", body, raw)
        assert single.status_code == 422, single.text
        assert any(name in error["loc"] and error["msg"] for error in single.json()["detail"]), single.text
        # the same application among valid ones in a batch: the error names its position and the field
        others = data.draw(st.lists(applications(st.integers(INT64_MIN, INT64_MAX)), max_size=2))
        at = data.draw(st.integers(0, len(others)))
        rows = [*others[:at], body, *others[at:]]
        batch = _post(http, served["token"], "/v1/score/batch", {"applications": rows}, raw)
        assert batch.status_code == 422, batch.text
        located = [error["loc"][:4] for error in batch.json()["detail"]]
        assert ["body", "applications", at, name] in located, batch.text


def test_the_batch_envelope_takes_only_its_applications(http: TestClient, served: dict[str, Any]) -> None:
    one = {KEY: served["customers"][0], "loan_amount": 1_000.0, "loan_term_months": 12, "loan_purpose": "car"}
    token = served["token"]
    extra = _post(http, token, "/v1/score/batch", {"applications": [one], "priority": "high"}).json()
    assert [e["loc"] for e in extra["detail"]] == [["body", "priority"]]
    missing = _post(http, token, "/v1/score/batch", {"apps": [one]}).json()
    assert {tuple(e["loc"]) for e in missing["detail"]} == {("body", "applications"), ("body", "apps")}
    too_many = _post(http, token, "/v1/score/batch", {"applications": [one] * (MAX_BATCH + 1)})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "applications"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "named"),
    [
        (b'{"customer_id": 1,', "application/json", 422, "Expecting"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 422, "nested deeper"),
        (b'{"customer_id": 1' + b"0" * 5_000 + b"}", "application/json", 422, "longer than 4300 digits"),
        (b'{"customer_id": "\xff"}', "application/json", 422, "not UTF-8"),
        (b'{"customer_id": 1}', "text/plain", 415, "'text/plain'"),
        (b'{"customer_id": 1}', "", 415, "missing"),
        (b"[1, 2]", "application/json", 422, "dictionary"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_4xx_naming_why(
    http: TestClient, served: dict[str, Any], content: bytes, content_type: str, status: int, named: str
) -> None:
    assert len(content) < MAX_BODY_BYTES
    headers = {"Authorization": f"Bearer {served['token']}"} | ({"Content-Type": content_type} if content_type else {})
    response = http.post("/v1/score", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert named in json.dumps(response.json()["detail"])
