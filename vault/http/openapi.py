"""The OpenAPI 3.1 document, generated from the registered endpoints and the
permission table, so it cannot drift from the routes.

Every schema comes from a pydantic model: request bodies, query parameters (each
property of the endpoint's query model, with its enums, bounds and formats), answers,
and the RFC 9457 problem body of every error (:mod:`vault.http.problems`). What an
endpoint declares (vault/http/routing.py ``Endpoint``) is completed here with what the
HTTP layer adds to every route of its kind: 401/403 where a token is needed, 404 where
the path names something, 400/413/415/422 where a body or query is read, the headers
of conditional and ranged reads, ``Location`` on 201 and 202.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from vault.http.jsonio import NO_NUL
from vault.http.problems import PROBLEM_JSON, Problem, error_codes, problem
from vault.http.routing import Endpoint
from vault.permissions import PUBLIC, allowed

_PARAM = re.compile(r"{(\w+)}")
_NOT_BLANK_NO_NUL = r"^[^\x00]*[^\x00\s][^\x00]*$"
JSON = "application/json"
FHIR_JSON = "application/fhir+json"
MULTIPART = "multipart/form-data"
REF = "#/components/schemas/{model}"
ERROR_DESCRIPTIONS = {
    400: "Bad request (a body that is not what its Content-Type says, a malformed multipart body)",
    401: "Missing or invalid bearer token (see WWW-Authenticate)",
    403: "The role may not do this",
    404: "Not found (or another tenant's)",
    406: "The Accept header asks for what this route does not make",
    408: "The body arrived too slowly; the connection is closed",
    409: "Conflict (state, legal hold, a reused Idempotency-Key)",
    410: "Gone (erased)",
    413: "Too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Failed validation: `details.errors` lists each field with its problem and the allowed values or limit",
    429: "Too many uploads in progress for this token; retry after Retry-After seconds",
    503: "Unavailable (storage, decoders, or the node's upload limits); retry after Retry-After seconds",
}

#: request headers an endpoint may declare it reads (``Endpoint.headers``)
HEADERS: dict[str, dict[str, Any]] = {
    "Idempotency-Key": {
        "description": "Makes a creating request safe to retry: the same key and body answer the first result; "
                       "the same key with another body is 409 idempotency_conflict",
        "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$", "minLength": 1, "maxLength": 255},
        "example": "3f1b6c1e-7a4e-4c55-9f3e-0c6f0f5a9b11",
    },
    "Range": {
        "description": "One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`): 206 with Content-Range; several ranges "
                       "or another unit are ignored (the whole body); past the end is 416",
        "schema": {"type": "string"},
        "example": "bytes=0-1023",
    },
    "If-None-Match": {
        "description": "Entity tags of a copy the client holds: 304 (audited like a read) when one matches",
        "schema": {"type": "string"},
        "example": '"5d41402abc4b2a76b9719d911017c592"',
    },
}
_RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "Where the created (or accepted) resource is read", "schema": {"type": "string", "format": "uri-reference"}},
    "ETag": {"description": "Entity tag for If-None-Match", "schema": {"type": "string"}},
    "Content-Disposition": {"description": "`inline` or `attachment`, with a file name made of ids only", "schema": {"type": "string"}},
    "Content-Range": {"description": "The range sent: `bytes a-b/size`", "schema": {"type": "string", "pattern": r"^bytes \d+-\d+/\d+$"}},
    "Accept-Ranges": {"description": "`bytes`", "schema": {"type": "string", "enum": ["bytes"]}},
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}},
    "WWW-Authenticate": {"description": 'RFC 6750: `Bearer`, or `Bearer error="invalid_token"` when a token was sent',
                         "schema": {"type": "string", "pattern": "^Bearer"}},
}
_FHIR_SCHEMAS = {
    "FhirResource": {"type": "object", "required": ["resourceType"], "additionalProperties": True,
                     "description": "A FHIR R4 resource (docs/fhir.md)", "properties": {"resourceType": {"type": "string"}}},
    "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "additionalProperties": True,
                         "description": "A FHIR R4 OperationOutcome: the error body under /fhir",
                         "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array", "items": {"type": "object"}}}},
}


def _header(name: str, *, required: bool = False) -> dict[str, Any]:
    return {**_RESPONSE_HEADERS[name], "required": required}


def _media_types(ep: Endpoint) -> tuple[str, ...]:
    return (ep.response_media,) if isinstance(ep.response_media, str) else ep.response_media


class _Schemas(GenerateJsonSchema):
    """A model serializer (one that omits unset keys, say) returns a bare dict, which
    describes nothing: such a model is described by its fields (the keys it may omit have
    defaults, so they are not required)."""

    def generate_inner(self, schema: Any) -> Any:
        if self.mode == "serialization" and schema.get("type") == "model" and \
                schema.get("serialization", {}).get("type") == "function-wrap":
            schema = {k: v for k, v in schema.items() if k != "serialization"}
        return super().generate_inner(schema)

    def str_schema(self, schema: Any) -> Any:
        json_schema = super().str_schema(schema)
        if "pattern" in json_schema:
            return json_schema
        request = self.mode == "validation"  # jsonio.refuse_nul holds every request to NO_NUL
        if schema.get("strip_whitespace") and schema.get("min_length"):
            # A stripped string that must not be empty needs something besides white space.
            json_schema["pattern"] = _NOT_BLANK_NO_NUL if request else r"\S"
        elif request:
            json_schema["pattern"] = NO_NUL
        return json_schema


def _refs(endpoints: list[Endpoint]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """One pass of pydantic over every model, so names that clash across domains (two
    ``PolicyIn``) and models used both ways get distinct component names."""
    wanted: dict[tuple[type[BaseModel], str], None] = {(Problem, "serialization"): None}
    for ep in endpoints:
        for model in (ep.body, ep.query):
            if model is not None:
                wanted[(model, "validation")] = None
        for model in (ep.response, *ep.also.values()):
            if model is not None:
                wanted[(model, "serialization")] = None
    keys, top = models_json_schema(list(wanted), ref_template=REF, schema_generator=_Schemas)  # type: ignore[arg-type]
    # pydantic names a clash by module path (vault__redaction__views__PolicyIn); a client
    # generator wants a class name: the domain, then the model (RedactionPolicyIn).
    text = json.dumps({"refs": list(keys.values()), "defs": top.get("$defs", {})})
    for name in top.get("$defs", {}):
        if "__" in name:
            parts = name.split("__")
            text = text.replace(f'"{REF.format(model=name)}"', f'"{REF.format(model=parts[1].capitalize() + parts[-1])}"')
            text = text.replace(f'"{name}":', f'"{parts[1].capitalize() + parts[-1]}":')
    renamed = json.loads(text)
    for name, schema in renamed["defs"].items():
        schema["title"] = name
    return dict(zip(keys, renamed["refs"], strict=True)), renamed["defs"]


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return components[ref.rsplit("/", 1)[-1]] if ref.startswith("#/components/schemas/") else schema


def _query_parameters(ref: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    model = _resolve(ref, components)
    parameters = []
    for name, prop in model.get("properties", {}).items():
        schema = dict(prop)
        # A query value is never JSON null: an optional parameter is one left out.
        branches = [b for b in schema.pop("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            schema.update(branches[0])
        elif branches:
            schema["anyOf"] = branches
        if schema.get("default") is None:
            schema.pop("default", None)
        description = schema.pop("description", "")
        schema.pop("title", None)
        parameters.append({"name": name, "in": "query", "required": name in model.get("required", []),
                           "description": description, "schema": schema})
    return parameters


def _request_body(ep: Endpoint, refs: dict[Any, Any]) -> dict[str, Any] | None:
    if ep.body is not None:
        body_schema = refs[(ep.body, "validation")]
        return {"required": ep.body_required, "content": {JSON: {"schema": body_schema}}}
    if not ep.request_media:
        return None
    content: dict[str, Any] = {}
    raw = [m for m in ep.request_media if m != MULTIPART]
    for media in raw:
        content[media] = {"schema": {"type": "string", "format": "binary", "contentMediaType": media}}
    if MULTIPART in ep.request_media:
        content[MULTIPART] = {
            "schema": {"type": "object", "required": ["file"], "additionalProperties": False,
                       "properties": {"file": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                                               "description": "The photo or video, one part named `file`"}}},
            "encoding": {"file": {"contentType": ", ".join(raw) or "application/octet-stream"}},
        }
    return {"required": True, "content": content}


def _success(ep: Endpoint, refs: dict[Any, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": "No content" if ep.status == 204 else "OK"}
    headers: dict[str, Any] = {}
    if ep.response is not None:
        answer["content"] = {JSON: {"schema": refs[(ep.response, "serialization")]}}
    elif ep.status != 204:
        answer["content"] = {}
        for media in _media_types(ep):
            schema = {"$ref": "#/components/schemas/FhirResource"} if media == FHIR_JSON else \
                {"type": "string", "format": "binary", "contentMediaType": media}
            answer["content"][media] = {"schema": schema}
        if all(m != FHIR_JSON for m in _media_types(ep)):
            headers["Content-Disposition"] = _header("Content-Disposition")
    if ep.status in (201, 202):
        headers["Location"] = _header("Location", required=True)
    if "If-None-Match" in ep.headers:
        headers["ETag"] = _header("ETag", required=True)
    if "Range" in ep.headers:
        headers["Accept-Ranges"] = _header("Accept-Ranges")
    if headers:
        answer["headers"] = headers
    return answer


def _ranged(ok: dict[str, Any]) -> dict[str, Any]:
    headers = {**ok.get("headers", {}), "Content-Range": _header("Content-Range", required=True)}
    return {**ok, "description": "Partial content: the byte range asked for", "headers": headers}


def _error_statuses(ep: Endpoint, roles: Any) -> set[int]:
    codes = set(ep.errors)
    if roles != PUBLIC:
        codes |= {401, 403}
    if _PARAM.search(ep.path):
        codes.add(404)
    if ep.query is not None:
        codes.add(422)
        if "cursor" in ep.query.model_fields:
            codes.add(404)  # a cursor this server did not give
    if ep.body is not None:
        codes |= {400, 413, 422}
    if ep.request_media:
        codes |= {400, 413, 415, 422}
    if "Idempotency-Key" in ep.headers:
        codes |= {409, 422}
    if "Range" in ep.headers:
        codes.add(416)
    return codes - set(ep.also)


_EXAMPLE_CODES = {status: code for code, (status, _) in reversed(list(error_codes().items()))}
_EXAMPLE_CODES.update({400: "bad_request", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "too_large", 422: "invalid", 503: "storage_unavailable"})


def _error(status: int, *, fhir: bool) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": ERROR_DESCRIPTIONS.get(status, "Error")}
    if fhir:
        answer["content"] = {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}
    else:
        code = _EXAMPLE_CODES.get(status, "http_error")
        example = problem(code, status, error_codes().get(code, (status, "error"))[1], instance="6f1c2a0e9b3d4c5a7e8f9012")
        answer["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}}
    if status == 401:
        answer["headers"] = {"WWW-Authenticate": _header("WWW-Authenticate", required=True)}
    elif status == 429:
        answer["headers"] = {"Retry-After": _header("Retry-After", required=True)}
    elif status == 503:
        answer["headers"] = {"Retry-After": _header("Retry-After")}
    return answer


def _operation_ids(endpoints: list[Endpoint]) -> dict[int, str]:
    names = [ep.handler.__name__ for ep in endpoints]
    return {i: name if names.count(name) == 1 else f"{ep.tag}_{name}" for i, (ep, name) in enumerate(zip(endpoints, names, strict=True))}


def build(endpoints: list[Endpoint], *, version: str) -> dict[str, Any]:
    refs, components = _refs(endpoints)
    components.update(_FHIR_SCHEMAS)
    components["Problem"] = components.pop(refs[(Problem, "serialization")]["$ref"].rsplit("/", 1)[-1])
    refs[(Problem, "serialization")] = {"$ref": "#/components/schemas/Problem"}
    operation_ids = _operation_ids(endpoints)
    paths: dict[str, dict[str, Any]] = {}
    for i, ep in enumerate(endpoints):
        roles = allowed(ep.method, ep.path)
        fhir = ep.path.startswith("/fhir/")
        op: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": operation_ids[i],
            "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                           for n in _PARAM.findall(ep.path)],
            "x-roles": sorted(roles) if isinstance(roles, frozenset) else [roles or "none"],
        }
        if roles != PUBLIC:
            op["security"] = [{"bearer": []}]
        if ep.query is not None:
            op["parameters"] += _query_parameters(refs[(ep.query, "validation")], components)
        op["parameters"] += [{"name": name, "in": "header", "required": False, **HEADERS[name]} for name in ep.headers]
        if (body := _request_body(ep, refs)) is not None:
            op["requestBody"] = body
        ok = _success(ep, refs)
        responses: dict[str, Any] = {str(ep.status): ok}
        for status, model in ep.also.items():
            responses[str(status)] = {"description": "See the summary", "content": {JSON: {"schema": refs[(model, "serialization")]}}}
        if "Range" in ep.headers:
            responses["206"] = _ranged(ok)
        if "If-None-Match" in ep.headers:
            responses["304"] = {"description": "Not modified: the tag matched", "headers": {"ETag": _header("ETag", required=True)}}
        for status in sorted(_error_statuses(ep, roles)):
            responses[str(status)] = _error(status, fhir=fhir)
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Clinical photo vault", "version": version,
                 "description": "Errors are RFC 9457 problem details (`application/problem+json`); "
                                "each `type` is documented at /docs/errors. The rendered reference is at /docs."},
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items())),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
