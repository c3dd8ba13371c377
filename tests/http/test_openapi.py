"""The OpenAPI document is complete and typed (issue 19, item 1), and errors are RFC 9457
problem details (item 2). The registry test fails for any endpoint added without a response
model, with a query, body or header it reads but does not declare."""

from __future__ import annotations

import inspect
import re

from pydantic import BaseModel

from vault.http.openapi import FHIR_JSON, HEADERS, JSON
from vault.http.problems import PROBLEM_JSON, TYPE_PREFIX, error_codes
from vault.http.routing import ENDPOINTS

# What a handler's own source shows it reads; a helper it calls must be declared the same way.
_READS_HEADER = {
    "Idempotency-Key": re.compile(r"Idempotency-Key|_idempotency_key\(request\)"),
    "Range": re.compile(r"parse_range\(|serve_content\(|await _serve\("),
    "If-None-Match": re.compile(r"if_none_match\(request\)|await _serve\("),
}


def _typed(schema: dict) -> bool:
    return any(k in schema for k in ("type", "enum", "const", "$ref")) or (
        "anyOf" in schema and all(_typed(s) for s in schema["anyOf"]))


def test_every_registered_endpoint_is_typed(client):
    untyped = []
    for ep in client.server.app[ENDPOINTS]:
        where = f"{ep.method} {ep.path}"
        source = inspect.getsource(ep.handler)
        media = (ep.response_media,) if isinstance(ep.response_media, str) else ep.response_media
        if ep.status != 204 and ep.response is None and JSON in media:
            untyped.append(f"{where}: a JSON answer without response=<pydantic model>")
        if ep.response is not None and not issubclass(ep.response, BaseModel):
            untyped.append(f"{where}: response is not a pydantic model")
        if ("parse_query(" in source or "request.query" in source) and ep.query is None and not ep.path.startswith("/fhir/"):
            untyped.append(f"{where}: reads the query string without query=<pydantic model>")
        if "read_json(" in source and ep.body is None:
            untyped.append(f"{where}: reads a JSON body without body=<pydantic model>")
        for name, pattern in _READS_HEADER.items():
            if pattern.search(source) and name not in ep.headers:
                untyped.append(f"{where}: reads {name} without headers=(\"{name}\",)")
        assert set(ep.headers) <= set(HEADERS), where
    assert not untyped, "\n".join(untyped)


async def test_spec_types_every_parameter_and_answer(client):
    spec = await (await client.get("/v1/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            for parameter in op["parameters"]:
                assert _typed(parameter["schema"]), f"{where}: parameter {parameter['name']} is untyped"
            for status, answer in op["responses"].items():
                if status in ("204", "304"):
                    continue
                assert answer.get("content"), f"{where} {status}: no content described"
                for media, body in answer["content"].items():
                    assert _typed(body["schema"]), f"{where} {status} {media}: untyped"
                if int(status) >= 400 and (path, status) != ("/readyz", "503"):  # readyz: its report
                    assert set(answer["content"]) == ({FHIR_JSON} if path.startswith("/fhir/") else {PROBLEM_JSON}), where
                if status in ("201", "202"):
                    assert answer["headers"]["Location"]["required"], where
                if status == "401":
                    assert answer["headers"]["WWW-Authenticate"]["required"], where
            if op.get("security"):
                assert {"401", "403"} <= set(op["responses"]), where
    # the query parameters keep their enums, bounds and formats
    media_list = {p["name"]: p["schema"] for p in spec["paths"]["/v1/patients/{patient_id}/media"]["get"]["parameters"]}
    assert media_list["phase"]["enum"] == ["before", "after", "progress", "adverse", "other"]
    assert (media_list["limit"]["type"], media_list["limit"]["minimum"], media_list["limit"]["maximum"]) == ("integer", 1, 200)
    assert media_list["since"]["format"] == "date-time"
    upload = spec["paths"]["/v1/patients/{patient_id}/media"]["post"]
    multipart = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["required"] == ["file"] and multipart["properties"]["file"]["format"] == "binary"
    assert {p["name"] for p in upload["parameters"] if p["in"] == "header"} == {"Idempotency-Key"}
    content = spec["paths"]["/v1/media/{media_id}/content"]["get"]
    assert {"200", "206", "304", "416"} <= set(content["responses"])
    assert "Content-Range" in content["responses"]["206"]["headers"]
    for name, schema in schemas.items():  # a model is described by its fields (not a serializer's bare dict)
        assert any(schema.get(k) for k in ("properties", "enum", "anyOf", "oneOf")), f"{name}: no properties"
    assert schemas["Problem"]["required"] == ["type", "title", "status", "detail", "instance", "error", "details"]


async def test_errors_are_problem_details(client, clinic):
    resp = await client.get("/v1/patients", params={"limit": "500"}, headers=clinic.auth("dpo"))
    assert resp.status == 422 and resp.content_type == PROBLEM_JSON
    body = await resp.json()
    assert body["type"] == TYPE_PREFIX + "invalid" and body["title"] == "Invalid" and body["status"] == 422
    assert body["instance"] == resp.headers["X-Request-ID"] and body["error"] == "invalid" and body["detail"]
    assert body["details"]["errors"] == [{"field": "limit", "problem": "less_than_equal", "limit": 200}]
    resp = await client.get(f"/v1/patients/{'0' * 32}/media", params={"phase": "later"}, headers=clinic.auth("dpo"))
    problems = (await resp.json())["details"]["errors"]
    assert problems == [{"field": "phase", "problem": "literal_error", "allowed": ["before", "after", "progress", "adverse", "other"]}]
    # every code has its page
    page = await (await client.get("/docs/errors")).text()
    for code in error_codes():
        assert f'id="{code}"' in page


async def test_401_carries_a_bearer_challenge(client):
    resp = await client.get("/v1/patients")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["error"] == "unauthorized"
    resp = await client.get("/v1/patients", headers={"Authorization": "Bearer not-a-token"})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_created_and_accepted_answers_carry_location(client, clinic):
    resp = await client.post("/v1/patients", json={"external_ref": "LOC-1"}, headers=clinic.auth("practitioner"))
    assert resp.status == 201
    patient = await resp.json()
    assert resp.headers["Location"] == f"/v1/patients/{patient['id']}"
    assert (await client.get(resp.headers["Location"], headers=clinic.auth("dpo"))).status == 200
    resp = await client.post(f"/v1/patients/{patient['id']}/exports", headers=clinic.auth("dpo"))
    assert resp.status == 202
    assert resp.headers["Location"] == f"/v1/exports/{(await resp.json())['id']}"
    assert (await client.get(resp.headers["Location"], headers=clinic.auth("dpo"))).status == 200


def test_errors_doc_lists_every_code():
    from pathlib import Path

    import vault.app  # noqa: F401  (every domain, with the errors it defines)

    doc = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    for code, (status, _) in error_codes().items():
        assert f'<a id="{code}"></a>`{code}` | {status} | `{TYPE_PREFIX}{code}`' in doc, code


def _free_strings(schema: dict, schemas: dict, where: str, seen: frozenset[str] = frozenset()) -> list[str]:
    """Strings a request may carry whose schema lets a NUL through (no enum, const or format,
    and a pattern that is missing or finds a match in a NUL)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return [] if name in seen else _free_strings(schemas[name], schemas, f"{where} ({name})", seen | {name})
    found = []
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key, [])):
            found += _free_strings(sub, schemas, f"{where}[{i}]", seen)
    for name, sub in schema.get("properties", {}).items():
        found += _free_strings(sub, schemas, f"{where}.{name}", seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += _free_strings(schema[key], schemas, f"{where}.{key}", seen)
    if schema.get("type") == "string" and not any(k in schema for k in ("enum", "const", "format")) and (
            "pattern" not in schema or any(re.search(schema["pattern"], s) for s in ("\x00", "a\x00", "a\x00a"))):
        found.append(where)
    return found


async def test_no_request_string_may_carry_a_nul(client):
    """PostgreSQL text cannot hold a NUL (in a filter or a stored string it was a 500): the
    document says so for every string of a query or a JSON body (jsonio.refuse_nul holds
    requests to it)."""
    spec = await (await client.get("/v1/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    free = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            for parameter in (p for p in op["parameters"] if p["in"] == "query"):
                free += _free_strings(parameter["schema"], schemas, f"{where} {parameter['in']} {parameter['name']}")
            for media, body in op.get("requestBody", {}).get("content", {}).items():
                free += _free_strings(body["schema"], schemas, f"{where} {media}")
    assert not free, "\n".join(free)
