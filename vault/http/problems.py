"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error of the API (not the FHIR routes, which answer OperationOutcome, nor the web
app's pages) has this body::

    {"type": "urn:clinical-photo-vault:error:not_found", "title": "Not found", "status": 404,
     "detail": "not found", "instance": "<the request id, as in X-Request-ID>",
     "error": "not_found", "details": {}}

``type`` is a stable URI per machine code (docs/errors.md, and /docs/errors on a running
vault); ``error`` is that code as earlier clients read it; ``details`` holds field
problems (with the allowed values or limits) and never any submitted value.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vault import errors

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:clinical-photo-vault:error:"

# Codes the HTTP layer answers itself (aiohttp's routing and parser), beside the tree's.
_HTTP_CODES = {
    "method_not_allowed": (405, "the route does not answer this method; the Allow header lists those it does"),
    "not_acceptable": (406, "the Accept header asks for a representation this route does not make"),
    "http_error": (400, "the request was refused by the HTTP layer"),
}


def problem_type(code: str) -> str:
    return TYPE_PREFIX + code


def problem_title(code: str) -> str:
    """A short summary that is the same for every occurrence of the code (RFC 9457 3.1.3)."""
    return code.replace("_", " ").capitalize()


def error_codes() -> dict[str, tuple[int, str]]:
    """Every machine code the API can answer: code -> (status, what it means)."""
    codes: dict[str, tuple[int, str]] = {}
    pending: list[type[errors.VaultError]] = [errors.VaultError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        codes.setdefault(cls.code, (cls.status, cls.default_message))
    codes.update(_HTTP_CODES)
    return dict(sorted(codes.items()))


def problem(code: str, status: int, detail: str, *, instance: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": problem_type(code), "title": problem_title(code), "status": status, "detail": detail,
        "instance": instance, "error": code, "details": details or {},
    }


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted location of the field (query parameter, body member or header)")
    problem: str = Field(description="The kind of problem (pydantic's error type, e.g. `enum`, `less_than_equal`, `missing`)")
    allowed: list[str] | None = Field(default=None, description="The values the field accepts, where it is a choice")
    limit: int | float | str | None = Field(default=None, description="The bound that was crossed, where there is one")


class Problem(BaseModel):
    """RFC 9457 problem details, plus the vault's machine ``error`` code and ``details``."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [problem(
        "invalid", 422, "request failed validation", instance="6f1c2a0e9b3d4c5a7e8f9012",
        details={"errors": [{"field": "phase", "problem": "enum", "allowed": ["before", "after", "progress", "adverse", "other"]}]},
    )]})
    type: str = Field(description=f"A stable URI per error code: `{TYPE_PREFIX}<error>` (docs/errors.md)", json_schema_extra={"format": "uri"})
    title: str = Field(description="A short summary of the problem type, the same for every occurrence")
    status: int = Field(ge=400, le=599, description="The HTTP status code")
    detail: str = Field(description="What went wrong with this request; never carries patient data")
    instance: str = Field(description="The request id (the X-Request-ID response header)")
    error: str = Field(description="The machine code, as earlier clients read it")
    details: dict[str, Any] = Field(description="Field problems (`errors`: a list of FieldProblem) or limits; never a submitted value")
