"""CORS: only for listed origins, only on /v1/ and /fhir/, only for bearer-token requests
without cookies, never with credentials; preflight answered before authentication."""

from __future__ import annotations

import secrets

import pytest

from vault.config import Settings
from vault.errors import ConfigError

ORIGIN = "https://ehr.clinic.example"


@pytest.fixture
def settings(settings):
    return settings.replace(cors_origins=(ORIGIN, "http://localhost:3000"))


async def patient(client, clinic) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)}, headers=clinic.auth("practitioner"))
    return (await resp.json())["id"]


def preflight(method: str = "POST", headers: str = "authorization, content-type, idempotency-key", origin: str = ORIGIN) -> dict:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


async def test_a_preflight_from_a_listed_origin_is_answered(client):
    resp = await client.options("/v1/patients/x/media", headers=preflight())
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert set(resp.headers["Access-Control-Allow-Methods"].split(", ")) >= {"GET", "POST", "PUT", "DELETE"}
    assert {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")} == {
        "authorization", "content-type", "idempotency-key", "range", "if-none-match"}
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert "Origin" in resp.headers["Vary"]


@pytest.mark.parametrize("headers", [
    preflight(origin="https://evil.example"),
    preflight(origin="https://ehr.clinic.example.evil.example"),
    preflight(origin="null"),
    preflight(method="TRACE"),
    preflight(headers="authorization, x-custom"),
    preflight(headers="cookie"),
])
async def test_a_preflight_outside_the_list_is_refused(client, headers):
    resp = await client.options("/v1/patients", headers=headers)
    assert resp.status == 403 and (await resp.json())["error"] == "cors_refused"
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_a_bearer_request_from_a_listed_origin_may_be_read(client, clinic):
    pid = await patient(client, clinic)
    resp = await client.get(f"/v1/patients/{pid}/media", headers={**clinic.auth("records"), "Origin": ORIGIN})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")} >= {
        "ETag", "Content-Range", "Content-Disposition", "Location"}
    assert "Access-Control-Allow-Credentials" not in resp.headers and "Origin" in resp.headers["Vary"]
    # errors too, so the page can read why
    denied = await client.get(f"/v1/patients/{pid}/media", headers={"Authorization": "Bearer nope", "Origin": ORIGIN})
    assert denied.status == 401 and denied.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_no_cors_without_a_bearer_token_with_a_cookie_or_elsewhere(client, clinic):
    pid = await patient(client, clinic)
    url = f"/v1/patients/{pid}/media"
    cases = [
        {**clinic.auth("records"), "Origin": "https://evil.example"},        # not listed
        {"Origin": ORIGIN},                                                  # no token (a cookie session's request)
        {**clinic.auth("records"), "Origin": ORIGIN, "Cookie": "session=x"},  # credentials: never shared
    ]
    for headers in cases:
        resp = await client.get(url, headers=headers)
        assert "Access-Control-Allow-Origin" not in resp.headers, headers
        assert "Access-Control-Allow-Credentials" not in resp.headers
    # outside the API (the staff app's pages, health checks): nothing, and no preflight either
    for path in ("/app/", "/healthz"):
        resp = await client.get(path, headers={**clinic.auth("records"), "Origin": ORIGIN})
        assert "Access-Control-Allow-Origin" not in resp.headers
        resp = await client.options(path, headers=preflight(method="GET"))
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_nothing_by_default(client, clinic, settings):
    from aiohttp.test_utils import TestClient

    from tests.conftest import VaultTestServer
    from vault.app import create_app

    async with TestClient(VaultTestServer(create_app(settings.replace(cors_origins=())))) as plain:
        resp = await plain.options("/v1/patients", headers=preflight())
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        resp = await plain.get("/v1/patients/x/media", headers={**clinic.auth("records"), "Origin": ORIGIN})
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def test_the_setting_is_parsed_and_checked(tmp_path):
    env = {"VAULT_DATA_DIR": str(tmp_path)}
    s = Settings.from_env({**env, "VAULT_CORS_ORIGINS": "HTTPS://EHR.Example:443, http://localhost:3000/,https://[::1]:8443"})
    assert s.cors_origins == ("https://ehr.example", "http://localhost:3000", "https://[::1]:8443")
    assert Settings.from_env(env).cors_origins == ()
    for bad in ("*", "null", "https://ehr.example/path", "ftp://ehr.example", "https://u:p@ehr.example", "https://ehr.example:99999"):
        with pytest.raises(ConfigError):
            Settings.from_env({**env, "VAULT_CORS_ORIGINS": bad})
