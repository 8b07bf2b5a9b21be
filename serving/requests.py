"""What the scoring service reads: the request schemas generated from the contract, the JSON body, the refusals.

A malformed request is the client's fault and gets a 4xx that names the problem, never a 5xx: every number
must be finite and fit a float64 (the model's matrix), every integer and entity key a signed 64-bit integer
(the online store's key), every envelope holds only its own fields, and a body that is not JSON, not sent as
JSON, or nested deeper than the parser goes is refused before any field is read.
"""

import email.message
import json
import math
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from closedloop.contract import Column, ColumnType, Contract

MAX_BATCH = 1000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# finite numbers only: JSON's NaN and Infinity (and 1e309, which reads as Infinity) are refused by the field
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def request_model(contract: Contract) -> type[BaseModel]:
    """The request body: the entity key and the prediction table's model inputs, typed and bounded by the contract.

    The body is read under the rules ingest applies to the table's file (``closedloop.source.request_values``):
    null tokens and missing codes are missing, a category may be sent as its file code, and a derived column is
    computed from its operands, which the body then carries instead.
    """
    from closedloop.contract import formula_names
    from closedloop.source import request_values

    key: tuple[Any, Any] = (
        (int, Field(ge=INT64_MIN, le=INT64_MAX, description="entity key (a signed 64-bit integer)"))
        if contract.key_type == "int"
        else (str, Field(description="entity key"))
    )
    fields: dict[str, Any] = {contract.entity.join_key: key}
    own = contract.columns_of(contract.prediction)
    derived = [c for c in own if c.formula and (c.is_model_input or c.group_thresholds)]
    operands = {name for c in derived for name in formula_names(c.formula or "")}
    for column in own:
        if column.formula:
            continue
        if column.is_model_input or column.name in operands:
            fields[column.name] = _request_field(column)
    for column in derived:
        fields[column.name] = (
            float | None,
            Field(default=None, description=f"{column.name} = {column.formula}: computed from the request's values"),
        )
    for column in contract.sensitive:
        if column.group_thresholds and column.name not in fields:  # only read by a group-threshold policy
            fields[column.name] = (
                float | str | None,
                Field(
                    default=None,
                    description=f"{column.name}: read only by a group-threshold decision policy, which takes the "
                    "stored value when the request leaves it out",
                ),
            )

    def as_ingested(cls: type[BaseModel], data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            return request_values(contract, data)
        except (ArithmeticError, ValueError, TypeError):
            # a value ingest's rules cannot read (an integer past a float, say): the field's own check names it
            return data

    return create_model(
        f"{contract.name.title().replace('_', '')}Application",
        __config__=STRICT,
        __validators__={"as_ingested": model_validator(mode="before")(as_ingested)},  # type: ignore[dict-item]
        **fields,
    )


def _request_field(column: Column) -> tuple[Any, Any]:
    """One input of the request: its type, bounds, and whether it may be left out."""
    kind: Any
    constraints: dict[str, Any] = {"description": column.description or column.name}
    if column.type is ColumnType.CATEGORY:  # a category's name, or its code in the table's file
        kind = Literal[tuple(dict.fromkeys([*(column.categories or []), *(column.codes or {})]))]
    elif column.type is ColumnType.INT:
        kind = int
        constraints.update(ge=INT64_MIN, le=INT64_MAX)  # what the model's float64 matrix and Feast's int64 hold
    elif column.type is ColumnType.BOOL:
        kind = bool
    else:
        kind = float
    if column.min is not None:
        constraints["ge"] = column.min
    if column.max is not None:
        constraints["le"] = column.max
    if column.nullable:
        return kind | None, Field(default=None, **constraints)
    return kind, Field(**constraints)


def batch_model(application: type[BaseModel]) -> type[BaseModel]:
    """The batch envelope: ``{"applications": [...]}``, 1 to MAX_BATCH applications and nothing else."""
    return create_model(
        "Batch",
        __config__=STRICT,
        applications=(list[application], Field(min_length=1, max_length=MAX_BATCH)),  # type: ignore[valid-type]
    )


class JSONRequest(Request):
    """A request whose JSON body problems are JSON decode errors (422 naming them), never a bare 400.

    Python's parser raises RecursionError for deep nesting, ValueError for an integer of more than
    ``sys.get_int_max_str_digits()`` digits and UnicodeDecodeError for bytes that are not UTF-8; FastAPI answers
    those with "There was an error parsing the body", which names nothing.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except json.JSONDecodeError:
                raise
            except RecursionError as exc:
                raise json.JSONDecodeError("nested deeper than the parser allows", "", 0) from exc
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"not UTF-8 ({exc.reason} at byte {exc.start})", "", 0) from exc
            except ValueError as exc:  # Python's cap on integer digits, whose message advises the server
                digits = sys.get_int_max_str_digits()
                raise json.JSONDecodeError(f"a number longer than {digits} digits", "", 0) from exc
        return self._json


class JSONRoute(APIRoute):
    """A route whose body must be sent as JSON: any other Content-Type is a 415 naming it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def json_only(request: Request) -> Response:
            given = request.headers.get("content-type", "")
            if not _is_json(given):
                return JSONResponse(
                    {
                        "detail": f"Content-Type {given or 'missing'!r}: send the body as JSON, "
                        "with Content-Type: application/json"
                    },
                    status_code=415,
                )
            return await handler(JSONRequest(request.scope, request.receive))

        return json_only


def _is_json(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type, parameters allowed (FastAPI's own test)."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """422 with each error's type, location (the field), message, and the value when it is a plain one.

    FastAPI's own handler echoes every input as JSON, which fails (a 500) on the NaN or Infinity it refuses; a
    list or object sent where a value belongs is not echoed, so the answer stays small whatever the body holds.
    """
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this exception only
    return JSONResponse({"detail": [_error(e) for e in exc.errors()]}, status_code=422)


def _error(error: dict[str, Any]) -> dict[str, Any]:
    """One pydantic error as JSON: non-finite inputs as text, an integer past float64 said to be one."""
    value = error.get("input")
    out = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
    if isinstance(value, int) and not isinstance(value, bool) and error["type"] == "float_type":
        out["msg"] = "Input should be a finite number: this integer overflows a 64-bit float"
    if isinstance(value, float) and not math.isfinite(value):
        out["input"] = str(value)  # nan, inf, -inf: not JSON
    elif value is None or isinstance(value, str | int | float):
        out["input"] = value
    if error.get("ctx"):
        out["ctx"] = {k: v if isinstance(v, str | int | float) else str(v) for k, v in error["ctx"].items()}
    return out
