"""The web app's pages over the aiohttp test client (no browser): each renders for the
roles the permission table allows, and its forms reach the domain services."""

from __future__ import annotations

import re

from tests.staff.support import Browser, enrolled
from vault.appkeys import RUNTIME


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
