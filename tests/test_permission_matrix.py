"""Every registered route × every role × own tenant / other tenant gets exactly the
outcome the permission table promises: 403 for a role not in the table (decided
first), 404 for another tenant's resource, success for the own tenant's.

A route added later must join the table, and this test must learn how to make
its path ids and a valid body (RESOURCES and BODIES below), or it fails."""

from __future__ import annotations

import re
import secrets

import pytest

from vault.http.routing import ENDPOINTS
from vault.permissions import PERMISSIONS, PUBLIC, ROLES, allowed

PARAM = re.compile(r"{(\w+)}")


async def _patient(client, clinic) -> str:
    resp = await client.post(
        "/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)}, headers=clinic.auth("practitioner")
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, "JPEG")
    return buf.getvalue()


async def _media(client, clinic) -> str:
    patient = await _patient(client, clinic)
    resp = await client.post(
        f"/v1/patients/{patient}/media", data=_jpeg(), headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"}
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


#: how to create, in a clinic, the resource a path parameter names
RESOURCES = {"patient_id": _patient, "media_id": _media}

#: a valid body for each route that takes one: JSON, or (bytes, content type)
BODIES = {
    ("POST", "/v1/patients"): lambda: {"external_ref": "MRN-" + secrets.token_hex(6)},
    ("PATCH", "/v1/patients/{patient_id}"): lambda: {"display_name": "Renamed"},
    ("POST", "/v1/patients/{patient_id}/treatments"): lambda: {"name": "Filler", "performed_on": "2026-01-02"},
    ("POST", "/v1/patients/{patient_id}/media"): lambda: (_jpeg(), "image/jpeg"),
    ("PATCH", "/v1/media/{media_id}"): lambda: {"phase": "after"},
}


def _request_body(body) -> dict:
    if body is None:
        return {}
    value = body()
    if isinstance(value, tuple):
        return {"data": value[0], "headers": {"Content-Type": value[1]}}
    return {"json": value}


async def _resources(client, clinic, names) -> dict[str, str]:
    return {name: await RESOURCES[name](client, clinic) for name in names}


def test_every_registered_route_is_in_the_permission_table(app):
    for ep in app[ENDPOINTS]:
        assert (ep.method, ep.path) in PERMISSIONS, f"{ep.method} {ep.path} is missing from vault/permissions.py"


async def test_permission_matrix(client, clinic, other_clinic):
    endpoints = [ep for ep in client.server.app[ENDPOINTS] if allowed(ep.method, ep.path) != PUBLIC]
    assert endpoints
    checked = 0
    for ep in endpoints:
        names = PARAM.findall(ep.path)
        missing = [n for n in names if n not in RESOURCES]
        assert not missing, f"teach the matrix test to create {missing} for {ep.path}"
        roles = allowed(ep.method, ep.path)
        for role in ROLES:
            for whose in ("own", "other") if names else ("own",):
                owner = clinic if whose == "own" else other_clinic
                ids = await _resources(client, owner, names)
                path = ep.path.format(**ids)
                kwargs = _request_body(BODIES.get((ep.method, ep.path)))
                headers = {**kwargs.pop("headers", {}), **clinic.auth(role)}
                resp = await client.request(ep.method, path, headers=headers, **kwargs)
                text = (await resp.read())[:300]
                where = f"{ep.method} {ep.path} as {role} on {whose} tenant"
                if role not in roles:
                    assert resp.status == 403, f"{where}: {resp.status} {text}"
                elif whose == "other":
                    assert resp.status == 404, f"{where}: {resp.status} {text}"
                else:
                    assert resp.status < 400, f"{where}: {resp.status} {text}"
                checked += 1
    assert checked >= len(endpoints) * len(ROLES)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer vt_nope", "Basic dXNlcjpwYXNz", "bearer  "])
async def test_missing_or_bad_tokens_are_401(client, header):
    headers = {"Authorization": header} if header is not None else {}
    resp = await client.get("/v1/patients", headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"


async def test_revoked_token_is_401(client, clinic):
    from vault.appkeys import TENANTS

    tenants = client.server.app[TENANTS]
    issued = await tenants.create_token(clinic.slug, "records", label="to revoke", request_id="t")
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert (await client.get("/v1/patients", headers=headers)).status == 200
    await tenants.revoke_token(issued.id, request_id="t")
    assert (await client.get("/v1/patients", headers=headers)).status == 401
