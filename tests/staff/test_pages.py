"""The web app's pages over the aiohttp test client (no browser): each renders for the
roles the permission table allows, and its forms reach the domain services."""

from __future__ import annotations

import re

from aiohttp import FormData

from tests.staff.support import Browser, enrolled
from vault.actor import Actor
from vault.appkeys import RUNTIME
from vault.audit.service import AuditEvent


async def _dpo(client, clinic) -> Browser:
    who = await enrolled(client.server.app[RUNTIME], clinic.slug, "dpo")
    browser = Browser(client)
    await browser.log_in(clinic.slug, who)
    browser.who = who  # type: ignore[attr-defined]
    return browser


async def test_retention_policy_dry_run_and_audit_pages(client, clinic):
    browser = await _dpo(client, clinic)
    page = await browser.get("/app/retention")
    assert page.status == 200, await page.text()
    csrf = await browser.csrf_of("/app/retention")
    saved = await browser.post("/app/retention", {"csrf_token": csrf, "clock_0": "last_activity", "erase_after_0": "P24M"})
    assert saved.status == 200 and "Policy saved" in await saved.text()
    run = await browser.post("/app/retention/dry-run", {"csrf_token": csrf})
    body = await run.text()
    assert run.status == 200 and re.search(r"Dry run [0-9a-f]{32}", body), body[-2000:]
    audit = await browser.get("/app/audit?action=retention.policy.write")
    assert audit.status == 200
    verify = await browser.post("/app/audit/verify", {"csrf_token": csrf})
    assert verify.status == 200 and "are intact" in await verify.text()


async def test_search_is_a_post_and_finds_by_hospital_number(client, clinic):
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-5521", "display_name": "Bea"},
                             headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    browser = await _dpo(client, clinic)
    csrf = await browser.csrf_of("/app/patients")
    found = await browser.post("/app/patients", {"csrf_token": csrf, "external_ref": "mrn-5521"})
    assert found.status == 303 and found.headers["Location"] == f"/app/patients/{patient}"
    none = await browser.post("/app/patients", {"csrf_token": csrf, "external_ref": "MRN-0000"})
    assert none.status == 200 and "No patient has that hospital number" in await none.text()
    page = await browser.get(found.headers["Location"])
    assert page.status == 200 and "Bea" in await page.text() and page.headers["Cache-Control"] == "no-store"


async def test_post_twin_of_the_external_ref_lookup(client, clinic, other_clinic):
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-9931"}, headers=clinic.auth("practitioner"))
    patient = (await resp.json())["id"]
    found = await client.post("/v1/patients/search", json={"external_ref": " mrn-9931 "}, headers=clinic.auth("records"))
    assert found.status == 200 and [p["id"] for p in (await found.json())["items"]] == [patient]
    other = await client.post("/v1/patients/search", json={"external_ref": "MRN-9931"}, headers=other_clinic.auth("dpo"))
    assert (await other.json())["items"] == []
    assert (await client.post("/v1/patients/search", json={"external_ref": "MRN-9931"},
                              headers=clinic.auth("marketing"))).status == 403
    assert (await client.post("/v1/patients/search", json={}, headers=clinic.auth("dpo"))).status == 422


async def test_audit_staff_filter_is_applied_in_the_query(client, clinic):
    """A hundred entries by others come first; the staff filter still fills its first page
    with the person's own entries (a filter applied per page would show none)."""
    rt = client.server.app[RUNTIME]
    colleague = await enrolled(rt, clinic.slug, "records")
    noise = Actor.cli(clinic.id, "noise")
    for _ in range(105):
        await rt.audit.record(AuditEvent.of(noise, "test.noise"))
    await Browser(client).log_in(clinic.slug, colleague)  # the colleague's login comes after the noise
    browser = await _dpo(client, clinic)
    page = await browser.get("/app/audit", params={"who": colleague.email.upper()})
    body = await page.text()
    assert page.status == 200
    assert "<td>staff.login</td>" in body and f"<td>{colleague.email}</td>" in body
    assert "<td>test.noise</td>" not in body and f"<td>{browser.who.email}</td>" not in body  # type: ignore[attr-defined]
    unfiltered = await (await browser.get("/app/audit")).text()
    assert "<td>test.noise</td>" in unfiltered and "<td>staff.login</td>" not in unfiltered  # the first page: noise
    older = re.search(r'href="/app/audit\?([^"]+)">Older entries', unfiltered)
    assert older and "after=" in older.group(1)
    nobody = await (await browser.get("/app/audit", params={"who": "nobody-by-that-name"})).text()
    assert "No entries." in nobody


async def test_patient_page_shows_the_hold_and_restriction_as_they_stand(client, clinic):
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-7310"}, headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    browser = await _dpo(client, clinic)
    path = f"/app/patients/{patient}"
    assert "<dt>Legal hold</dt>\n  <dd>None." in await (await browser.get(path)).text()
    csrf = await browser.csrf_of(path)
    placed = await browser.post(path + "/legal-hold", {"csrf_token": csrf, "action": "place", "reason": "Claim 2026/114"})
    assert placed.status == 303
    await browser.post(path + "/restriction", {"csrf_token": csrf, "action": "place"})
    held = await (await browser.get(path)).text()
    email = browser.who.email  # type: ignore[attr-defined]
    assert "<strong>Held</strong> since" in held and f"by {email}: erasure is blocked" in held
    assert "<dd>Claim 2026/114</dd>" in held and "<strong>Restricted</strong>" in held
    await browser.post(path + "/legal-hold", {"csrf_token": csrf, "action": "lift"})
    await browser.post(path + "/restriction", {"csrf_token": csrf, "action": "lift"})
    lifted = await (await browser.get(path)).text()
    assert "was lifted" in lifted and "Reason of the last hold" in lifted and "Not restricted." in lifted
    # the API's responses still never carry the reason
    api = await client.put(f"/v1/patients/{patient}/legal-hold", json={"reason": "Claim 2026/115"}, headers=clinic.auth("dpo"))
    assert api.status == 200 and "Claim" not in await api.text()


def _consent_upload(csrf: str | None, evidence: bytes, *, filename: str = "signed.pdf") -> FormData:
    data = FormData()
    if csrf is not None:
        data.add_field("csrf_token", csrf)  # first, as the page's form has it
    data.add_field("purpose_education", "on")
    data.add_field("notes", "signed at the desk")
    data.add_field("evidence", evidence, filename=filename, content_type="application/pdf")
    return data


async def test_consent_with_its_signed_form_uploaded_from_the_page(client, clinic):
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-4410"}, headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    browser = await _dpo(client, clinic)
    path = f"/app/patients/{patient}"
    csrf = await browser.csrf_of(path)
    signed = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    # without the token first, and with a file that is no PDF, JPEG or PNG: refused, nothing kept
    assert (await browser.post(path + "/consents", _consent_upload(None, signed))).status == 403
    assert (await browser.post(path + "/consents", _consent_upload(csrf, b"MZ\x90\x00 not a form"))).status == 415
    listed = await client.get(f"/v1/patients/{patient}/consents", headers=clinic.auth("dpo"))
    assert (await listed.json())["items"] == []
    done = await browser.post(path + "/consents", _consent_upload(csrf, signed))
    assert done.status == 303 and done.headers["Location"] == path + "?done=consent"
    items = (await (await client.get(f"/v1/patients/{patient}/consents", headers=clinic.auth("dpo"))).json())["items"]
    assert len(items) == 1 and items[0]["purposes"] == ["education"] and items[0]["evidence"]
    evidence = await client.get(f"/v1/consents/{items[0]['id']}/evidence", headers=clinic.auth("dpo"))
    assert evidence.status == 200 and await evidence.read() == signed
    page = await (await browser.get(path)).text()
    assert f'href="/v1/consents/{items[0]["id"]}/evidence"' in page


async def test_audit_time_action_and_target_filters(client, clinic):
    """The viewer's other filters (times in UTC, as the table shows them; action; target id)
    are part of the query, and "older entries" keeps them."""
    from datetime import UTC, datetime, timedelta

    rt = client.server.app[RUNTIME]
    browser = await _dpo(client, clinic)
    marker = Actor.cli(clinic.id, "filters")
    await rt.audit.record(AuditEvent.of(marker, "test.filtered", patient_id="a" * 32))
    await rt.audit.record(AuditEvent.of(marker, "test.filtered", patient_id="b" * 32))
    now = datetime.now(UTC).replace(tzinfo=None)
    window = {"since": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
              "until": (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")}
    hits = await (await browser.get("/app/audit", params={**window, "action": "test.filtered"})).text()
    assert hits.count("<td>test.filtered</td>") == 2
    one = await (await browser.get("/app/audit", params={"action": "test.filtered", "target": "b" * 32})).text()
    assert one.count("<td>test.filtered</td>") == 1 and "b" * 12 in one and "a" * 12 not in one
    past = {"until": (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"), "action": "test.filtered"}
    assert "No entries." in await (await browser.get("/app/audit", params=past)).text()
    bad = await browser.get("/app/audit", params={"since": "yesterday"})
    assert bad.status == 422
