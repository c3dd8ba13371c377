"""Every registered route × every role × own tenant / other tenant gets exactly the
outcome the permission table promises: 403 for a role not in the table (decided
first), 404 for another tenant's resource, success for the own tenant's.

A route added later must join the table, and this test must learn how to make
its path ids and a valid body (RESOURCES and BODIES below), or it fails."""

from __future__ import annotations

import re
import secrets

import pytest

from vault.consent.gate import PURPOSES
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
    media = (await resp.json())["id"]
    # Consent for every purpose, so that the release routes succeed for marketing.
    resp = await client.post(
        f"/v1/patients/{patient}/consents", json={"purposes": list(PURPOSES), "identifiable": True}, headers=clinic.auth("dpo")
    )
    assert resp.status == 201, await resp.text()
    return media


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (250, 250, 250)).save(buf, "PNG")
    return buf.getvalue()


async def _consent(client, clinic) -> str:
    import base64

    patient = await _patient(client, clinic)
    evidence = {"content_type": "image/png", "data": base64.b64encode(_png()).decode()}
    resp = await client.post(
        f"/v1/patients/{patient}/consents", json={"purposes": ["education"], "identifiable": False, "evidence": evidence},
        headers=clinic.auth("practitioner"),
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def _release(client, clinic) -> str:
    media = await _media(client, clinic)
    resp = await client.post(
        f"/v1/media/{media}/releases", json={"purpose": "education", "recipient": "Dermatology journal"},
        headers=clinic.auth("marketing"),
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def _export(client, clinic) -> str:
    from tests.lifecycle.support import drain
    from vault.appkeys import RUNTIME

    patient = await _patient(client, clinic)
    resp = await client.post(f"/v1/patients/{patient}/exports", headers=clinic.auth("dpo"))
    assert resp.status == 202, await resp.text()
    await drain(client.server.app[RUNTIME], "lifecycle.build_export")  # ready, so its one download succeeds
    return (await resp.json())["id"]


async def _dicom_export(client, clinic) -> str:
    media = await _media(client, clinic)
    resp = await client.post(f"/v1/media/{media}/dicom-exports", headers=clinic.auth("practitioner"))
    assert resp.status == 202, await resp.text()
    return (await resp.json())["id"]


async def _receipt(client, clinic) -> str:
    patient = await _patient(client, clinic)
    resp = await client.post(f"/v1/patients/{patient}/erasure", json={"reason": "asked"}, headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["receipt"]["receipt_id"]


async def _token(client, clinic) -> str:
    from vault.appkeys import RUNTIME

    issued = await client.server.app[RUNTIME].tenants.create_token(clinic.slug, "records", label="matrix spare",
                                                                   request_id="t")
    return issued.id


async def _sweep(client, clinic) -> str:
    from vault.actor import Actor
    from vault.appkeys import RUNTIME

    # A real sweep of a clinic with no rules: recorded, erasing nobody.
    made = await client.server.app[RUNTIME].lifecycle.retention.sweep(Actor.cli(clinic.id, "t"), dry_run=False)
    assert made.id is not None
    return made.id


#: how to create, in a clinic, the resource a path parameter names
RESOURCES = {"patient_id": _patient, "media_id": _media, "consent_id": _consent, "release_id": _release,
             "export_id": _export, "dicom_export_id": _dicom_export, "receipt_id": _receipt, "token_id": _token,
             "sweep_id": _sweep}

#: a valid body for each route that takes one: JSON, or (bytes, content type)
BODIES = {
    ("POST", "/v1/patients"): lambda: {"external_ref": "MRN-" + secrets.token_hex(6)},
    ("PATCH", "/v1/patients/{patient_id}"): lambda: {"display_name": "Renamed"},
    ("POST", "/v1/patients/search"): lambda: {"external_ref": "MRN-" + secrets.token_hex(6)},
    ("POST", "/v1/patients/{patient_id}/treatments"): lambda: {"name": "Filler", "performed_on": "2026-01-02"},
    ("POST", "/v1/patients/{patient_id}/media"): lambda: (_jpeg(), "image/jpeg"),
    ("PATCH", "/v1/media/{media_id}"): lambda: {"phase": "after"},
    ("POST", "/v1/patients/{patient_id}/consents"): lambda: {"purposes": ["education", "social_media"], "identifiable": False},
    ("POST", "/v1/media/{media_id}/releases"): lambda: {"purpose": "social_media", "recipient": "Clinic Instagram"},
    # no endpoint: deliveries queued here would outlive the test (tests/webhooks checks destinations)
    ("PUT", "/v1/webhooks"): lambda: {"urls": []},
    ("POST", "/v1/patients/{patient_id}/erasure"): lambda: {"reason": "asked by the patient"},
    ("PUT", "/v1/patients/{patient_id}/legal-hold"): lambda: {"reason": "pending claim"},
    ("PUT", "/v1/retention-policy"): lambda: {"rules": [{"clock": "last_treatment", "erase_after": "P7Y"}]},
    ("POST", "/v1/retention/sweep"): lambda: {"dry_run": True},
    ("PUT", "/v1/release-policy"): lambda: {"deidentified": "review"},
    ("PUT", "/v1/media/{media_id}/redaction"): lambda: {"boxes": [[1, 1, 8, 8]]},
    ("POST", "/v1/releasable/search"): lambda: {"purpose": "education", "rendition": "original", "treatment": "Filler"},
    ("PUT", "/v1/treatment-types"): lambda: {"names": ["Lip filler", "Chemical peel"]},
}


async def _approve_body(client, clinic, ids: dict[str, str]) -> dict:
    """The approval names the digest the reviewer saw: read it as a dpo of the media's tenant."""
    resp = await client.get(f"/v1/media/{ids['media_id']}/redaction", headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    return {"json": {"digest": (await resp.json())["digest"]}}


async def _fhir_search_by_id(client, clinic, ids: dict[str, str]) -> dict:
    return {"params": {"patient": await _patient(client, clinic)}}


async def _fhir_search_by_identifier(client, clinic, ids: dict[str, str]) -> dict:
    """The MRN in the form body (never in the URL), of a patient of the clinic asked about."""
    mrn = "MRN-" + secrets.token_hex(6)
    resp = await client.post("/v1/patients", json={"external_ref": mrn}, headers=clinic.auth("practitioner"))
    assert resp.status == 201, await resp.text()
    return {"data": {"subject:Patient.identifier": mrn}}


async def _recalled(client, clinic, ids: dict[str, str]) -> dict:
    """A take-down needs a recalled release: withdraw the consent it was made under."""
    resp = await client.get("/v1/releases?limit=200", headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    consent = next(r["consent_id"] for r in (await resp.json())["items"] if r["id"] == ids["release_id"])
    resp = await client.post(f"/v1/consents/{consent}/withdraw", headers=clinic.auth("dpo"))
    assert resp.status == 201, await resp.text()
    return {}


async def _pair(client, clinic, ids: dict[str, str]) -> dict:
    """A composite names two photos of one patient, both releasable identifiable."""
    patient = await _patient(client, clinic)
    media = []
    for _ in range(2):
        resp = await client.post(f"/v1/patients/{patient}/media", data=_jpeg(),
                                 headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
        assert resp.status == 201, await resp.text()
        media.append((await resp.json())["id"])
    resp = await client.post(f"/v1/patients/{patient}/consents", json={"purposes": ["marketing"], "identifiable": True},
                             headers=clinic.auth("dpo"))
    assert resp.status == 201, await resp.text()
    return {"json": {"before": media[0], "after": media[1], "purpose": "marketing", "recipient": "Clinic Instagram"}}


#: routes whose valid body (or state) depends on the resource (own tenant's reads only)
DEPENDENT_BODIES = {("POST", "/v1/media/{media_id}/redaction/approve"): _approve_body,
                    ("POST", "/v1/releases/{release_id}/takedown"): _recalled,
                    ("POST", "/v1/releases/composites"): _pair,
                    ("GET", "/fhir/R4/Media"): _fhir_search_by_id,
                    ("POST", "/fhir/R4/Media/_search"): _fhir_search_by_identifier}


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
                if (ep.method, ep.path) in DEPENDENT_BODIES:
                    kwargs = await DEPENDENT_BODIES[(ep.method, ep.path)](client, owner, ids)
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
    from vault.appkeys import RUNTIME

    tenants = client.server.app[RUNTIME].tenants
    issued = await tenants.create_token(clinic.slug, "records", label="to revoke", request_id="t")
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert (await client.get("/v1/patients", headers=headers)).status == 200
    await tenants.revoke_token(issued.id, request_id="t")
    assert (await client.get("/v1/patients", headers=headers)).status == 401
