"""The permission matrix for web sessions: every page and form of the app × every role ×
own/other tenant gets what the permission table promises (403 for a role not in it, 404
for another tenant's resource, success otherwise), and every ``/v1`` route refuses a
session of a role not in its row with 403 — the same table, the same order as tokens."""

from __future__ import annotations

import re
import secrets

from tests.staff.support import Browser, enrolled
from tests.test_permission_matrix import _sweep  # a real sweep of the clinic (no rules, nobody erased)
from vault.appkeys import RUNTIME
from vault.http.routing import ENDPOINTS
from vault.permissions import PERMISSIONS, PUBLIC, ROLES

PARAM = re.compile(r"{(\w+)}")


async def _patient(client, clinic) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)},
                             headers=clinic.auth("practitioner"))
    return (await resp.json())["id"]


async def _consent(client, clinic) -> str:
    patient = await _patient(client, clinic)
    resp = await client.post(f"/v1/patients/{patient}/consents", json={"purposes": ["education"], "identifiable": False},
                             headers=clinic.auth("dpo"))
    return (await resp.json())["id"]


async def _export(client, clinic) -> str:
    patient = await _patient(client, clinic)
    resp = await client.post(f"/v1/patients/{patient}/exports", headers=clinic.auth("dpo"))
    return (await resp.json())["id"]


async def _staff(client, clinic) -> str:
    issued = await client.server.app[RUNTIME].staff.create(clinic.slug, f"x{secrets.token_hex(4)}@c.example", "records",
                                                           request_id="t")
    return issued.staff.id


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, "JPEG")
    return buf.getvalue()


async def _media(client, clinic) -> str:
    patient = await _patient(client, clinic)
    resp = await client.post(f"/v1/patients/{patient}/media", data=_jpeg(),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
    media = (await resp.json())["id"]
    await client.post(f"/v1/patients/{patient}/consents", json={"purposes": ["education"], "identifiable": True},
                      headers=clinic.auth("dpo"))
    return media


#: the marketing session of the clinic under test: only who asked for a release may download it
MARKETING: dict[str, object] = {}


async def _release(client, clinic) -> str:
    media = await _media(client, clinic)
    body = {"purpose": "education", "recipient": "Journal"}
    if clinic.slug in MARKETING:
        browser = MARKETING[clinic.slug]
        resp = await browser.post(f"/v1/media/{media}/releases", json=body,  # type: ignore[attr-defined]
                                  headers={"X-CSRF-Token": browser.csrf})  # type: ignore[attr-defined]
    else:
        resp = await client.post(f"/v1/media/{media}/releases", json=body, headers=clinic.auth("marketing"))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


RESOURCES = {"patient_id": _patient, "consent_id": _consent, "export_id": _export, "staff_id": _staff,
             "media_id": _media, "release_id": _release, "sweep_id": _sweep}


async def test_session_permission_matrix(client, clinic, other_clinic):
    rt = client.server.app[RUNTIME]
    browsers = {}
    for role in ROLES:
        who = await enrolled(rt, clinic.slug, role)
        browsers[role] = Browser(client)
        await browsers[role].log_in(clinic.slug, who)
        browsers[role].csrf = await browsers[role].csrf_of("/app/")  # type: ignore[attr-defined]
    MARKETING[clinic.slug] = browsers["marketing"]
    pages = [(m, p) for (m, p), roles in PERMISSIONS.items() if p.startswith("/app/") and roles != PUBLIC
             and p != "/app/logout"]
    checked = 0
    for method, template in pages:
        roles = PERMISSIONS[(method, template)]
        names = PARAM.findall(template)
        for role in ROLES:
            for whose in ("own", "other") if names else ("own",):
                owner = clinic if whose == "own" else other_clinic
                ids = {n: await RESOURCES[n](client, owner) for n in names}
                path = template.format(**ids)
                browser = browsers[role]
                if method == "GET":
                    resp = await browser.get(path)
                else:
                    form = {"csrf_token": browser.csrf, "reason": "matrix", "external_ref": "MRN-NONE",  # type: ignore[attr-defined]
                            "email": f"m{secrets.token_hex(4)}@c.example", "role": "records", "purpose_education": "on"}
                    resp = await browser.post(path, form)
                where = f"{method} {template} as {role} on {whose} tenant: {resp.status}"
                if role not in roles:  # type: ignore[operator]
                    assert resp.status == 403, where
                elif whose == "other":
                    assert resp.status == 404, where
                else:
                    assert resp.status not in (401, 403, 404) and resp.status < 500, where
                checked += 1
    assert checked >= len(pages) * len(ROLES)
    # the API through a session: a role outside a route's row is refused first (403), ids unseen
    for ep in client.server.app[ENDPOINTS]:
        roles = PERMISSIONS[(ep.method, ep.path)]
        if roles == PUBLIC:
            continue
        path = PARAM.sub("0" * 32, ep.path)
        for role in ROLES:
            if role in roles:  # type: ignore[operator]
                continue
            browser = browsers[role]
            headers = {"X-CSRF-Token": browser.csrf}  # type: ignore[attr-defined]
            resp = await (browser.get(path, headers=headers) if ep.method == "GET"
                          else browser.post(path, json={}, headers=headers) if ep.method == "POST"
                          else browser.client.request(ep.method, path, headers=browser._headers(headers)))  # type: ignore[attr-defined]
            assert resp.status == 403, f"{ep.method} {ep.path} as a {role} session: {resp.status}"
