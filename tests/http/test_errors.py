import json
import logging
import re
import secrets

from tests.support.metrics import METRICS_AUTH
from vault.http.routing import ENDPOINTS


async def test_unknown_route_is_json_404_with_request_id(client):
    resp = await client.get("/v1/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    assert re.fullmatch(r"[0-9a-f]{24}", resp.headers["X-Request-ID"])


async def test_wrong_method_is_json_405(client, clinic):
    resp = await client.delete("/v1/patients", headers=clinic.auth("dpo"))
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_malformed_json_and_wrong_content_type(client, clinic):
    h = clinic.auth("practitioner")
    resp = await client.post("/v1/patients", data=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"
    resp = await client.post("/v1/patients", data=b"external_ref=1", headers={**h, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400


async def test_oversized_json_is_413(client, clinic, settings):
    big = json.dumps({"external_ref": "x", "notes": "y" * (settings.max_json_bytes + 10)})
    resp = await client.post("/v1/patients", data=big, headers={**clinic.auth("practitioner"), "Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"] == "too_large"


async def test_query_validation(client, clinic):
    resp = await client.get("/v1/patients", params={"limit": "many"}, headers=clinic.auth("dpo"))
    assert resp.status == 422
    resp = await client.get("/v1/patients", params={"colour": "blue"}, headers=clinic.auth("dpo"))
    assert resp.status == 422


async def test_health_and_readiness(client):
    assert (await (await client.get("/healthz")).json())["status"] == "ok"
    assert (await (await client.get("/readyz")).json())["checks"]["database"] == "ok"
    # /metrics wants the metrics token (tests/http/test_metrics.py covers it in full).
    assert (await client.get("/metrics")).status == 401
    metrics = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    assert "vault_http_requests" in metrics


async def test_openapi_lists_every_registered_route(client):
    spec = await (await client.get("/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    for ep in client.server.app[ENDPOINTS]:
        assert ep.method.lower() in spec["paths"].get(ep.path, {}), f"{ep.method} {ep.path} missing from OpenAPI"
    from vault.web.views import is_page_path  # the staff web app's HTML pages are not the API

    registered = {
        (r.method, r.resource.canonical) for r in client.server.app.router.routes()
        if r.method not in ("HEAD", "OPTIONS") and not is_page_path(r.resource.canonical)
    }
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert registered == documented


async def test_logs_carry_route_templates_never_ids_refs_or_tokens(client, clinic, caplog):
    marker = "MRN-" + secrets.token_hex(6)
    with caplog.at_level(logging.INFO):
        resp = await client.post("/v1/patients", json={"external_ref": marker, "display_name": "Hilda Secret"}, headers=clinic.auth("practitioner"))
        pid = (await resp.json())["id"]
        await client.get("/v1/patients", params={"external_ref": marker}, headers=clinic.auth("dpo"))
        await client.get(f"/v1/patients/{pid}", headers=clinic.auth("dpo"))
    from vault.logs import JsonFormatter

    lines = [JsonFormatter().format(r) for r in caplog.records]
    text = "\n".join(lines)
    assert '"route": "/v1/patients/{patient_id}"' in text
    for secret in (marker, "Hilda Secret", clinic.tokens["practitioner"], clinic.tokens["dpo"], pid):
        assert secret not in text


async def test_unexpected_errors_are_generic_500_without_trace(client, clinic, monkeypatch):
    from vault.patients.views import PATIENTS

    async def boom(*a, **k):
        raise RuntimeError("secret detail Ada Lovelace")

    monkeypatch.setattr(client.server.app[PATIENTS], "page", boom)
    resp = await client.get("/v1/patients", headers=clinic.auth("dpo"))
    assert resp.status == 500
    body = await resp.text()
    problem = json.loads(body)
    assert resp.content_type == "application/problem+json"
    assert problem == {"type": "urn:clinical-photo-vault:error:internal", "title": "Internal", "status": 500,
                       "detail": "internal error", "instance": resp.headers["X-Request-ID"], "error": "internal", "details": {}}
    assert "Ada" not in body and "Traceback" not in body
