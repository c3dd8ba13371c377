"""Reading and validating JSON bodies and query strings; writing JSON responses."""

from __future__ import annotations

import functools
import json
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from vault.appkeys import SETTINGS
from vault.errors import BadRequest, TooLarge, ValidationFailed
from vault.http.bodies import TimedBody


def whole_number(value: Any) -> Any:
    """An integer as JSON Schema means one: 72.0 is 72, which the strict body parse would
    refuse (72.5 still is). A ``mode="before"`` validator of a JSON body's integer fields."""
    return int(value) if isinstance(value, float) and value.is_integer() else value

M = TypeVar("M", bound=BaseModel)
_RE_QUOTED = re.compile(r"'([^']*)'")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


_LIMITS = ("le", "ge", "lt", "gt", "max_length", "min_length", "multiple_of", "pattern")

#: What the OpenAPI document says of every string a query or a JSON body may carry
#: (vault/http/openapi.py); :func:`refuse_nul` holds requests to it.
NO_NUL = r"^[^\x00]*$"


def refuse_nul(data: Any, field: str = "") -> None:
    """A NUL (U+0000) in any string or member name of a query or a JSON body is a 422.

    PostgreSQL text cannot hold one: in a filter or a stored string it was a 500 there, and
    no field of ours needs it. One check at the edge, before any model sees the data."""
    if isinstance(data, str):
        if "\x00" in data:
            raise ValidationFailed(details={"errors": [
                {"field": field, "problem": "string_pattern_mismatch", "limit": NO_NUL}]})
    elif isinstance(data, dict):
        for key, value in data.items():
            where = f"{field}.{key}" if field else str(key)
            refuse_nul(key, field)  # the parent's location: a member name is not echoed
            refuse_nul(value, where)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            refuse_nul(value, f"{field}.{i}" if field else str(i))


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    # Field locations, error kinds and the schema's own bounds or choices (pydantic's
    # ``ctx``, taken from the model, not from the input): never echo submitted values.
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        problem: dict[str, Any] = {"field": ".".join(str(p) for p in err["loc"]), "problem": err["type"]}
        ctx = err.get("ctx") or {}
        if err["type"] in ("enum", "literal_error") and "expected" in ctx:
            problem["allowed"] = _RE_QUOTED.findall(str(ctx["expected"]))
        for name in _LIMITS:
            if name in ctx and isinstance(ctx[name], int | float | str):
                problem["limit"] = ctx[name]
                break
        problems.append(problem)
    return problems


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes, under the body deadline of
    :mod:`vault.http.bodies` (a body spans several reads)."""
    body = TimedBody(request.content.read, request.app[SETTINGS].http_body_timeout)
    buffer = bytearray()
    while chunk := await body.read(64 * 1024):
        buffer += chunk
        if len(buffer) > limit:
            raise TooLarge(details={"limit": limit})
    return bytes(buffer)


async def read_json(request: web.Request, model: type[M], *, limit: int) -> M:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(details={"limit": limit})
    if request.content_type != "application/json":
        raise BadRequest("the body must be application/json")
    raw = await read_capped(request, limit)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    except RecursionError:
        # 64 KiB of "[" nests deeper than the parser's recursion limit. None of our
        # bodies nests more than a few levels, so this is never a real request.
        raise BadRequest("the body nests too deeply") from None
    refuse_nul(data)
    _check_temporal(model, data)
    try:
        # strict: a JSON number is not a date or a boolean, nor a string a number; what the
        # OpenAPI document says a field is, is all it accepts
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise ValidationFailed(details={"errors": _problems(exc)}) from None
    except RecursionError:
        raise BadRequest("the body nests too deeply") from None


@functools.cache
def _temporal_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields the model's JSON schema says are ``format: date`` or ``date-time``."""
    properties = model.model_json_schema().get("properties", {})

    def temporal(schema: dict[str, Any]) -> bool:
        return schema.get("format") in ("date", "date-time") or any(temporal(s) for s in schema.get("anyOf", []))

    return frozenset(name for name, schema in properties.items() if temporal(schema))


def _check_temporal(model: type[BaseModel], data: Any) -> None:
    """pydantic reads "0.5" as a Unix time for a date or a datetime; the API documents
    ISO 8601 (``format: date`` / ``date-time``) and takes nothing else."""
    if not isinstance(data, dict):
        return
    for name in _temporal_fields(model):
        value = data.get(name)
        if isinstance(value, str) and not _ISO_DATE.match(value):
            raise ValidationFailed(details={"errors": [{"field": name, "problem": "iso8601"}]})


#: parsed queries of frozen models, by (model, query string): a hot route asks the same few
_PARSED: dict[tuple[type[BaseModel], str], BaseModel] = {}
_PARSED_SIZE = 1024


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query as ``model``; 422 with every problem. A frozen model's result is kept
    by query string (bounded): a thumbnail route sees ``size=256`` thousands of times."""
    frozen = model.model_config.get("frozen", False)
    if frozen:
        cached = _PARSED.get((model, request.query_string))
        if cached is not None:
            return cached  # type: ignore[return-value]
    parsed = _parse_query(request, model)
    if frozen:
        if len(_PARSED) >= _PARSED_SIZE:
            _PARSED.clear()
        _PARSED[(model, request.query_string)] = parsed
    return parsed


def _parse_query(request: web.Request, model: type[M]) -> M:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ValidationFailed(details={"errors": [{"field": key, "problem": "repeated"}]})
        data[key] = values[0]
    refuse_nul(data)
    _check_temporal(model, data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details={"errors": _problems(exc)}) from None


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> web.Response:
    """``data`` is a response model (an endpoint's declared ``response=``) or plain JSON data."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    body = json.dumps(data, separators=(",", ":"), default=str)
    response = web.Response(text=body, status=status, content_type=content_type, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response
