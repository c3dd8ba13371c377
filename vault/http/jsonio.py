"""Reading and validating JSON bodies and query strings; writing JSON responses."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from vault.appkeys import SETTINGS
from vault.errors import BadRequest, TooLarge, ValidationFailed
from vault.http.bodies import TimedBody

M = TypeVar("M", bound=BaseModel)
_RE_QUOTED = re.compile(r"'([^']*)'")


_LIMITS = ("le", "ge", "lt", "gt", "max_length", "min_length", "multiple_of", "pattern")


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
    try:
        return model.model_validate(data, strict=False)
    except ValidationError as exc:
        raise ValidationFailed(details={"errors": _problems(exc)}) from None
    except RecursionError:
        raise BadRequest("the body nests too deeply") from None


def parse_query(request: web.Request, model: type[M]) -> M:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise ValidationFailed(details={"errors": [{"field": key, "problem": "repeated"}]})
        data[key] = values[0]
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
