"""The practitioner's pages over the aiohttp test client (no browser; SQLite and
PostgreSQL): timeline, capture and comparison render from the services; the forms refuse
bad input leaving nothing behind; a session's upload through /v1 needs the CSRF header and
our Origin, and its Idempotency-Key makes a retry return the first photo; another clinic
gets 404, a role without the page 403. The browser side is tests/web/test_practice.py."""

from __future__ import annotations

import io

from PIL import Image

from tests.staff.support import Browser, enrolled
from vault.appkeys import RUNTIME


def _jpeg(colour: tuple[int, int, int] = (150, 90, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buf, "JPEG")
    return buf.getvalue()


async def _staff(client, clinic, role: str) -> Browser:
    browser = Browser(client)
    await browser.log_in(clinic.slug, await enrolled(client.server.app[RUNTIME], clinic.slug, role))
    return browser


async def _seed(client, clinic) -> tuple[str, str, str]:
    """A patient, a treatment of the lips and its 'before' photo, through the API."""
    auth = clinic.auth("practitioner")
    patient = (await (await client.post("/v1/patients", json={"external_ref": "MRN-7781"}, headers=auth)).json())["id"]
    resp = await client.post(f"/v1/patients/{patient}/treatments", headers=auth,
                             json={"name": "Lip filler", "performed_on": "2026-03-01", "area": "lips"})
    treatment = (await resp.json())["id"]
    resp = await client.post(f"/v1/patients/{patient}/media?phase=before&treatment_id={treatment}", data=_jpeg(),
                             headers={**auth, "Content-Type": "image/jpeg"})
    assert resp.status == 201, await resp.text()
    return patient, treatment, (await resp.json())["id"]


async def _media(client, clinic, patient: str) -> list[dict]:
    resp = await client.get(f"/v1/patients/{patient}/media", headers=clinic.auth("practitioner"))
    return (await resp.json())["items"]


async def test_pages_render_and_forms_refuse_bad_input(client, clinic):
    patient, treatment, before = await _seed(client, clinic)
    nurse = await _staff(client, clinic, "practitioner")
    base = f"/app/patients/{patient}"

    timeline = await nurse.get(base + "/timeline")
    body = await timeline.text()
    assert timeline.status == 200 and "Lip filler · 2026-03-01" in body and f"/v1/media/{before}/thumbnail" in body
    assert f'href="{base}/capture?treatment={treatment}">Add photos to this visit' in body
    capture = await (await nurse.get(base + "/capture")).text()
    assert f'value="{treatment}" data-guide="{before}"' in capture  # the earlier photo of the area guides the next
    assert 'accept="image/*,video/*" capture="environment" multiple' in capture
    compare = await nurse.get(base + "/compare")
    assert compare.status == 200 and "fewer than two photos" in await compare.text()

    csrf = await nurse.csrf_of(base + "/capture")
    for bad in ({"name": "", "performed_on": "2026-04-01"}, {"name": "Botox", "performed_on": "April"},
                {"name": "x" * 201, "performed_on": "2026-04-01"}):
        assert (await nurse.post(base + "/treatments", {"csrf_token": csrf, **bad})).status == 422
    listed = await client.get(f"/v1/patients/{patient}/treatments", headers=clinic.auth("practitioner"))
    assert [t["id"] for t in (await listed.json())["items"]] == [treatment]  # nothing left behind
    made = await nurse.post(base + "/treatments", {"csrf_token": csrf, "name": "Botox", "area": "forehead",
                                                   "performed_on": "2026-04-01"})
    assert made.status == 303 and made.headers["Location"].startswith(base + "/capture?treatment=")

    review = f"/app/media/{before}/face-review"
    assert (await nurse.post(review, {"csrf_token": csrf, "identifiable": "maybe"})).status == 422
    assert (await _media(client, clinic, patient))[0]["faces"]["review"] is None
    assert (await nurse.post(review, {"identifiable": "not_identifiable"})).status == 403  # no CSRF token
    done = await nurse.post(review, {"csrf_token": csrf, "identifiable": "not_identifiable"})
    assert done.status == 303 and done.headers["Location"] == f"{base}/timeline?done=reviewed#m-{before}"
    assert (await _media(client, clinic, patient))[0]["faces"]["review"] == "not_identifiable"
    assert 'value="not_identifiable" aria-pressed="true"' in await (await nurse.get(base + "/timeline")).text()


async def test_session_upload_needs_csrf_and_origin_and_is_idempotent(client, clinic):
    patient, treatment, before = await _seed(client, clinic)
    nurse = await _staff(client, clinic, "practitioner")
    csrf = await nurse.csrf_of(f"/app/patients/{patient}/capture")
    path = f"/v1/patients/{patient}/media?phase=after&treatment_id={treatment}"
    photo = _jpeg((40, 60, 200))
    key = {"Content-Type": "image/jpeg", "Idempotency-Key": "5f0c4e3a-file-1"}
    assert (await nurse.post(path, photo, headers=key)).status == 403  # no CSRF header
    nurse.origin = "https://elsewhere.example"
    assert (await nurse.post(path, photo, headers={**key, "X-CSRF-Token": csrf})).status == 403
    nurse.origin = None
    assert len(await _media(client, clinic, patient)) == 1  # nothing stored by the refused ones
    first = await nurse.post(path, photo, headers={**key, "X-CSRF-Token": csrf})
    again = await nurse.post(path, photo, headers={**key, "X-CSRF-Token": csrf})  # the retry after a lost answer
    assert (first.status, again.status) == (201, 200)
    assert (await first.json())["id"] == (await again.json())["id"]
    assert len(await _media(client, clinic, patient)) == 2
    compare = await nurse.get(f"/app/patients/{patient}/compare")
    body = await compare.text()
    assert compare.status == 200 and body.count('<figure data-width="64" data-height="48">') == 2
    assert f"/v1/media/{before}/thumbnail?size=1024" in body and f"/v1/media/{(await first.json())['id']}/thumbnail" in body
    unknown = await nurse.get(f"/app/patients/{patient}/compare?a={'0' * 32}&b={before}")
    assert unknown.status == 404


async def test_other_clinic_gets_404_and_records_get_no_capture_or_review(client, clinic, other_clinic):
    patient, _, before = await _seed(client, clinic)
    stranger = await _staff(client, other_clinic, "practitioner")
    for page in ("timeline", "capture", "compare"):
        assert (await stranger.get(f"/app/patients/{patient}/{page}")).status == 404
    csrf = await stranger.csrf_of("/app/patients")
    refused = await stranger.post(f"/app/media/{before}/face-review", {"csrf_token": csrf, "identifiable": "identifiable"})
    assert refused.status == 404
    assert (await _media(client, clinic, patient))[0]["faces"]["review"] is None

    clerk = await _staff(client, clinic, "records")
    assert (await clerk.get(f"/app/patients/{patient}/timeline")).status == 200
    assert (await clerk.get(f"/app/patients/{patient}/capture")).status == 403
    csrf = await clerk.csrf_of("/app/patients")
    assert (await clerk.post(f"/app/media/{before}/face-review", {"csrf_token": csrf, "identifiable": "identifiable"})).status == 403


async def test_an_identifiable_mark_stands_until_a_dpo_clears_it(client, clinic):
    patient, _, before = await _seed(client, clinic)
    nurse, dpo = await _staff(client, clinic, "practitioner"), await _staff(client, clinic, "dpo")
    review = f"/app/media/{before}/face-review"
    csrf = await nurse.csrf_of(f"/app/patients/{patient}/timeline")
    assert (await nurse.post(review, {"csrf_token": csrf, "identifiable": "identifiable"})).status == 303
    refused = await nurse.post(review, {"csrf_token": csrf, "identifiable": "not_identifiable"})
    assert refused.status == 403 and "data protection officer" in await refused.text()
    csrf = await dpo.csrf_of(f"/app/patients/{patient}/timeline")
    assert (await dpo.post(review, {"csrf_token": csrf, "identifiable": "not_identifiable"})).status == 303
    assert (await _media(client, clinic, patient))[0]["faces"]["review"] == "not_identifiable"


async def test_another_clinic_gets_404_before_its_form_is_judged(client, clinic, other_clinic):
    patient, _, before = await _seed(client, clinic)
    stranger = await _staff(client, other_clinic, "practitioner")
    csrf = await stranger.csrf_of("/app/patients")
    assert (await stranger.post(f"/app/patients/{patient}/treatments", {"csrf_token": csrf})).status == 404
    assert (await stranger.post(f"/app/media/{before}/face-review", {"csrf_token": csrf})).status == 404
