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


#: how to create, in a clinic, the resource a path parameter names
RESOURCES = {"patient_id": _patient}

#: a valid body for each route that takes one
BODIES = {
    ("POST", "/v1/patients"): lambda: {"external_ref": "MRN-" + secrets.token_hex(6)},
    ("PATCH", "/v1/patients/{patient_id}"): lambda: {"display_name": "Renamed"},
}


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
                body = BODIES.get((ep.method, ep.path))
                resp = await client.request(ep.method, path, json=body() if body else None, headers=clinic.auth(role))
                text = await resp.text()
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
