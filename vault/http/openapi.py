"""The OpenAPI 3.1 document, generated from the registered endpoints and the
permission table, so it cannot drift from the routes."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from vault.http.routing import Endpoint
from vault.permissions import PUBLIC, allowed

_PARAM = re.compile(r"{(\w+)}")
ERROR_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid bearer token",
    403: "The role may not do this",
    404: "Not found (or another tenant's)",
    408: "The body arrived too slowly; the connection is closed",
    409: "Conflict",
    410: "Gone (erased)",
    413: "Too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Failed validation",
    429: "Too many uploads in progress for this token; retry after Retry-After seconds",
    503: "Unavailable (storage, or the node's upload limits); retry after Retry-After seconds",
}


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build(endpoints: list[Endpoint], *, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message", "details"],
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}},
        }
    }
    for ep in endpoints:
        roles = allowed(ep.method, ep.path)
        op: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": ep.handler.__name__,
            "parameters": [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in _PARAM.findall(ep.path)],
            "x-roles": sorted(roles) if isinstance(roles, frozenset) else [roles or "none"],
        }
        if roles != PUBLIC:
            op["security"] = [{"bearer": []}]
        if ep.query is not None:
            for name, field in ep.query.model_fields.items():
                op["parameters"].append(
                    {"name": name, "in": "query", "required": field.is_required(), "schema": {"type": "string"}, "description": field.description or ""}
                )
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema(ep.body, components)}}}
        elif ep.request_media:
            op["requestBody"] = {"required": True, "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in ep.request_media}}
        ok: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            ok["content"] = {ep.response_media: {"schema": _schema(ep.response, components)}}
        elif ep.response_media != "application/json":
            ok["content"] = {ep.response_media: {"schema": {"type": "string", "format": "binary"}}}
        responses: dict[str, Any] = {str(ep.status): ok}
        codes = set(ep.errors) | ({401, 403} if roles != PUBLIC else set())
        for code in sorted(codes):
            responses[str(code)] = {
                "description": ERROR_DESCRIPTIONS.get(code, "Error"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        op["responses"] = responses
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Clinical photo vault", "version": version},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
