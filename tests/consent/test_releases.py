"""Release paths over HTTP: the listing, signed thumbnails, releases and their one-time
downloads all ask the gate with fresh rows, so a withdrawal, an expiry or a restriction
takes effect on the very next request."""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image, ImageOps
from sqlalchemy import select

from tests.consent.conftest import face_jpeg
from tests.pipeline.leaks import identifying_tags, planted_markers
from keys.errors import KeyDestroyed, KeyNotFound
from vault.appkeys import RUNTIME
from vault.consent.views import RELEASES
from vault.audit.models import AuditEntry
from vault import signedurls
from vault.consent.models import ConsentRecord, Release
from vault.consent.releases import REDACTION_MARGIN
from vault.db import utcnow
from vault.media.models import Media
from vault.patients.models import Patient

PAST = datetime(2000, 1, 1, tzinfo=UTC)


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


async def download(client, clinic, release: dict, *, role: str = "marketing"):
    return await client.get(urlsplit(release["download_url"]).path, headers=clinic.auth(role))


async def test_identifiable_consent_releases_the_stripped_original_once(api, client, clinic, exiftool):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    await api.consent(pid, purposes=["education"], identifiable=True)

    listed = await api.releasable("education")
    item = listed[(photo["id"], "education")]
    assert item["rendition"] == "original" and item["thumbnail_url"].startswith(f"/v1/releasable/{photo['id']}/thumbnail?")
    assert (photo["id"], "social_media") not in await api.releasable(None)

    release = await api.release(photo["id"])
    assert release["rendition"] == "original" and release["download_url"] == f"/v1/releases/{release['id']}/download"
    resp = await download(client, clinic, release)
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    name = re.fullmatch(r'attachment; filename="([0-9a-f]{24})\.jpg"', resp.headers["Content-Disposition"])
    assert name and photo["id"] not in name.group(1) and pid not in name.group(1)
    original = await (await client.get(f"/v1/media/{photo['id']}/content", headers=clinic.auth("records"))).read()
    assert body == original  # the stripped original, byte for byte
    assert identifying_tags(exiftool.tags(body)) == [] and planted_markers(body) == []

    again = await download(client, clinic, release)
    assert again.status == 410
    # HEAD checks without spending a fresh link.
    fresh = await api.release(photo["id"], recipient="Second journal")
    head = await client.head(urlsplit(fresh["download_url"]).path, headers=clinic.auth("marketing"))
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(original)
    assert (await download(client, clinic, fresh)).status == 200


async def test_deidentified_consent_releases_a_redacted_rendition(api, client, clinic, exiftool):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    assert photo["faces"]["detected"] and photo["faces"]["boxes"], "the face detector must find the astronaut"
    await api.consent(pid, purposes=["social_media"], identifiable=False)
    await api.approve(photo["id"])  # the default policy: a person approves the redaction first

    handle = await api.handle(photo["id"], "social_media")
    item = (await api.releasable("social_media"))[(handle, "social_media")]
    assert item["rendition"] == "deidentified" and "media_id" not in item
    release = await api.release(handle, purpose="social_media")
    assert release["rendition"] == "deidentified" and release["handle"] == handle and "media_id" not in release
    resp = await download(client, clinic, release)
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    redacted = await resp.read()

    original = await (await client.get(f"/v1/media/{photo['id']}/content", headers=clinic.auth("records"))).read()
    with Image.open(io.BytesIO(original)) as img:
        shown = np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.int16)
    out = pixels(redacted)
    assert out.shape == shown.shape  # oriented as displayed
    x, y, w, h = photo["faces"]["boxes"][0]
    # The stored box is the fill rectangle (margin applied by the search); 2 px in from its
    # edge, past the JPEG's ringing at the fill's border.
    inside = out[y + 2:y + h - 2, x + 2:x + w - 2]
    assert inside.max() <= 12 and np.abs(inside - shown[y + 2:y + h - 2, x + 2:x + w - 2]).mean() > 40
    far = np.ones(out.shape[:2], dtype=bool)
    for x, y, w, h in photo["faces"]["boxes"]:  # every box is filled (the detectors may find more than the face)
        mx, my = int(w * REDACTION_MARGIN), int(h * REDACTION_MARGIN)
        far[max(0, y - my - 8):y + h + my + 8, max(0, x - mx - 8):x + w + mx + 8] = False
    assert np.abs(out[far] - shown[far]).mean() < 4  # only JPEG re-encoding noise far from the boxes
    assert identifying_tags(exiftool.tags(redacted)) == [] and planted_markers(redacted) == []

    # The signed thumbnail (no bearer) is the redacted one as well.
    thumb = await client.get(item["thumbnail_url"])
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    small = pixels(await thumb.read())
    scale = small.shape[1] / shown.shape[1]
    cx, cy = int((x + w / 2) * scale), int((y + h / 2) * scale)
    assert small[cy - 3:cy + 3, cx - 3:cx + 3].max() <= 12
    # The rendition is shredded after its one download.
    assert (await download(client, clinic, release)).status == 410


async def test_a_face_without_boxes_or_a_reviewer_verdict_needs_review(api, client, clinic):
    pid = await api.patient()
    assumed, reviewed, clear = await api.photo(pid), await api.photo(pid, face_jpeg()), await api.photo(pid)
    await api.set(Media, assumed["id"], faces_detected=True, faces_assumed=True)  # as if no detector had loaded
    resp = await client.patch(f"/v1/media/{reviewed['id']}", json={"identifiable": True}, headers=clinic.auth("dpo"))
    assert resp.status == 200
    await api.consent(pid, identifiable=False)
    await api.policy("auto")  # today's rules: the detector decides without a person

    listed = await api.releasable()
    clear_handle = await api.handle(clear["id"])
    assert (clear_handle, "education") in listed and listed[(clear_handle, "education")]["rendition"] == "deidentified"
    for media in (assumed, reviewed):
        handle = await api.handle(media["id"])
        assert (handle, "education") not in listed
        denied = await api.release(handle, status=403)
        assert denied["error"] == "consent_required" and denied["details"]["reason"] == "needs_review"
        # By media id, nothing about the de-identified branch is told.
        assert (await api.release(media["id"], status=403))["details"]["reason"] == "not_releasable"


async def test_withdrawal_takes_effect_on_the_very_next_request(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid)
    grant = await api.consent(pid, purposes=["education"])
    item = (await api.releasable())[(photo["id"], "education")]
    pending = await api.release(photo["id"])
    assert (await client.get(item["thumbnail_url"])).status == 200

    await api.withdraw(grant["id"])
    assert (photo["id"], "education") not in await api.releasable()
    denied = await api.release(photo["id"], status=403)
    assert denied["details"]["reason"] == "withdrawn"
    resp = await download(client, clinic, pending)
    assert resp.status == 403 and (await resp.json())["details"]["reason"] == "withdrawn"
    assert (await client.get(item["thumbnail_url"])).status == 403

    # A new consent counts at once, too.
    await api.consent(pid, purposes=["education"])
    assert (photo["id"], "education") in await api.releasable()


async def test_expiry_restriction_erasure_and_link_lifetime_deny(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid)
    grant = await api.consent(pid, expires_at="2099-01-01T00:00:00+00:00")
    release = await api.release(photo["id"])
    await api.set(ConsentRecord, grant["id"], expires_at=PAST)  # time passes
    assert (photo["id"], "education") not in await api.releasable()
    assert (await api.release(photo["id"], status=403))["details"]["reason"] == "expired"
    assert (await (await download(client, clinic, release)).json())["details"]["reason"] == "expired"

    other = await api.patient()
    media = await api.photo(other)
    await api.consent(other)
    link = await api.release(media["id"])
    await api.set(Release, link["id"], expires_at=PAST)
    assert (await download(client, clinic, link)).status == 410
    await api.set(Patient, other, status="restricted")
    assert (media["id"], "education") not in await api.releasable()
    assert (await api.release(media["id"], status=403))["details"]["reason"] == "patient_restricted"
    await api.set(Patient, other, status="erased")  # as an erasure does
    assert (media["id"], "education") not in await api.releasable()
    assert (await api.release(media["id"], status=410))["error"] == "patient_erased"  # like every path


async def test_signed_thumbnails_are_bound_and_checked(api, client, clinic, other_clinic):
    pid = await api.patient()
    photo, second = await api.photo(pid, face_jpeg()), await api.photo(pid)
    await api.consent(pid, identifiable=False)
    await api.policy("auto")
    handle = await api.handle(photo["id"])
    url = (await api.releasable())[(handle, "education")]["thumbnail_url"]
    assert urlsplit(url).path == f"/v1/releasable/{handle}/thumbnail"  # no media id in the path
    path, query = urlsplit(url).path, {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert (await client.get(path, params=query)).status == 200

    tampered = [
        {**query, "signature": query["signature"][:-1] + ("0" if query["signature"][-1] != "0" else "1")},
        {**query, "rendition": "original"},  # the unredacted one, with the redacted one's signature
        {**query, "purpose": "marketing"},
        {**query, "expires": str(int(query["expires"]) + 3600)},
    ]
    for params in tampered:
        assert (await client.get(path, params=params)).status == 403, params
    assert (await client.get(f"/v1/releasable/{second['id']}/thumbnail", params=query)).status == 403  # other media
    assert (await client.get(f"/v1/releasable/{photo['id']}/thumbnail", params=query)).status == 403  # the media id
    assert (await client.get(path, params={k: v for k, v in query.items() if k != "signature"})).status == 422

    # An expired signature, then a revoked token: refused even with a valid signature.
    expired = await signedurls.sign(client.server.app[RUNTIME].keys, clinic.id, purpose="release-thumbnail:education",
                                    resource=f"{handle}:deidentified", token_id=query["token"], expires_at=utcnow())
    assert (await client.get(path, params={**query, **expired.query()})).status == 410
    tenants = client.server.app[RUNTIME].tenants
    await tenants.revoke_token(query["token"], request_id="test")
    assert (await client.get(path, params=query)).status == 403


async def test_marketing_reaches_no_other_media_path_and_other_tenants_get_404(api, other_api, client, clinic, other_clinic):
    pid = await api.patient()
    photo = await api.photo(pid)
    await api.consent(pid, purposes=["education", "marketing"])
    for method, path in (("GET", f"/v1/media/{photo['id']}/content"), ("GET", f"/v1/media/{photo['id']}/thumbnail"),
                         ("GET", f"/v1/media/{photo['id']}"), ("GET", f"/v1/patients/{pid}"), ("GET", f"/v1/patients/{pid}/media"),
                         ("GET", f"/v1/patients/{pid}/consents"), ("GET", "/v1/patients"), ("PATCH", f"/v1/media/{photo['id']}"),
                         ("POST", f"/v1/patients/{pid}/consents")):
        resp = await client.request(method, path, headers=clinic.auth("marketing"))
        assert resp.status == 403, (method, path)

    release = await api.release(photo["id"])
    assert (await other_api.release(photo["id"], status=404))["error"] == "not_found"
    assert (await download(client, other_clinic, release)).status == 404
    assert (photo["id"], "education") not in await other_api.releasable()
    resp = await client.get("/v1/releases", params={"patient_id": pid}, headers=other_clinic.auth("dpo"))
    assert resp.status == 404
    # A colleague's token cannot spend someone else's link.
    colleague = await client.server.app[RUNTIME].tenants.create_token(clinic.slug, "marketing", label="colleague", request_id="t")
    resp = await client.get(urlsplit(release["download_url"]).path, headers={"Authorization": f"Bearer {colleague.token}"})
    assert resp.status == 403
    assert (await download(client, clinic, release)).status == 200


async def test_release_list_for_recall_and_its_audit(api, client, clinic):
    pid = await api.patient()
    first, second = await api.photo(pid), await api.photo(pid)
    await api.consent(pid, purposes=["education", "publication"])
    one = await api.release(first["id"], recipient="Congress")
    two = await api.release(second["id"], purpose="publication", recipient="Journal")
    resp = await client.get("/v1/releases", params={"patient_id": pid}, headers=clinic.auth("dpo"))
    items = (await resp.json())["items"]
    assert [(i["id"], i["recipient"], i["purpose"]) for i in items] == [(one["id"], "Congress", "education"),
                                                                          (two["id"], "Journal", "publication")]
    resp = await client.get("/v1/releases", params={"media_id": second["id"], "limit": "1"}, headers=clinic.auth("marketing"))
    marketing_items = (await resp.json())["items"]
    assert [i["id"] for i in marketing_items] == [two["id"]]
    assert "patient_id" not in marketing_items[0] and "patient_id" in items[0]  # marketing never sees patients
    page = await (await client.get("/v1/releases", params={"patient_id": pid, "limit": "1"}, headers=clinic.auth("dpo"))).json()
    rest = await (await client.get("/v1/releases", params={"patient_id": pid, "cursor": page["next_cursor"]},
                                   headers=clinic.auth("dpo"))).json()
    assert [i["id"] for i in page["items"] + rest["items"]] == [one["id"], two["id"]] and rest["next_cursor"] is None

    await download(client, clinic, one)
    await client.get("/v1/releasable", headers=clinic.auth("marketing"))
    async with client.server.app[RUNTIME].db.session() as session:
        rows = (await session.execute(select(AuditEntry).where(AuditEntry.tenant_id == clinic.id))).scalars().all()
    actions = [r.action for r in rows]
    assert {"release.create", "release.download", "release.list", "release.list_releasable"} <= set(actions)
    assert not any("Congress" in r.targets or "Journal" in r.targets for r in rows)


async def test_listing_pages_over_what_the_gate_allows(api, client, clinic):
    pid = await api.patient()
    treatment = await api.treatment(pid)
    inside = [(await api.photo(pid, treatment_id=treatment))["id"] for _ in range(3)]
    outside = [(await api.photo(pid))["id"] for _ in range(2)]
    listed_only = outside[0]
    await api.consent(pid, treatment_id=treatment, purposes=["publication"])
    await api.consent(pid, media_ids=[listed_only], purposes=["publication"], identifiable=False)
    await api.policy("auto")

    seen, cursor = [], None
    while True:
        params = {"purpose": "publication", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/v1/releasable", params=params, headers=clinic.auth("marketing"))).json()
        assert len(page["items"]) <= 2
        seen += [(i.get("media_id") or i["handle"], i["rendition"]) for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    handle = await api.handle(listed_only, "publication")
    assert sorted(seen) == sorted([(m, "original") for m in inside] + [(handle, "deidentified")])


async def test_unused_redacted_renditions_are_shredded(api, client, clinic):
    pid = await api.patient()
    first, second = await api.photo(pid, face_jpeg()), await api.photo(pid, face_jpeg())
    grant = await api.consent(pid, identifiable=False)
    await api.policy("auto")
    expiring, recalled = await api.release(await api.handle(first["id"])), await api.release(await api.handle(second["id"]))
    blobs = {}
    async with client.server.app[RUNTIME].db.session() as session:
        for r in (expiring, recalled):
            blobs[r["id"]] = (await session.get(Release, r["id"])).blob_id
    assert all(blobs.values())

    await api.set(Release, expiring["id"], expires_at=PAST)
    assert await client.server.app[RELEASES].shred_expired() >= 1
    await api.withdraw(grant["id"])  # the recalled, never downloaded rendition goes at once
    async with client.server.app[RUNTIME].db.session() as session:
        for r in (expiring, recalled):
            assert (await session.get(Release, r["id"])).blob_id is None
    for blob_id in blobs.values():  # destroyed: no node can decrypt them any more
        with pytest.raises((KeyDestroyed, KeyNotFound)):
            await client.server.app[RUNTIME].keys.object_key(clinic.id, pid, blob_id)


async def test_redaction_decodes_in_a_worker_and_a_failed_worker_is_a_422(api, client, clinic, monkeypatch):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    await api.consent(pid, purposes=["social_media"], identifiable=False)
    await api.policy("auto")
    handle = await api.handle(photo["id"], "social_media")
    item = (await api.releasable("social_media"))[(handle, "social_media")]

    # No decoder runs in the server process: the redaction is rendered in a decoder worker.
    def no_decoding_here(*args, **kwargs):
        raise AssertionError("an image was decoded in the server process")

    monkeypatch.setattr(Image, "open", no_decoding_here)
    thumb = await client.get(item["thumbnail_url"])
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    release = await api.release(handle, purpose="social_media")
    resp = await download(client, clinic, release)
    assert resp.status == 200 and (await resp.read())[:2] == b"\xff\xd8"
    monkeypatch.undo()

    # A worker killed at its wall time fails the release alone: 422, nothing recorded. (A
    # changed box makes the next use render again; until then the stored rendition serves.)
    x, y, w, h = photo["faces"]["boxes"][0]
    resp = await client.put(f"/v1/media/{photo['id']}/redaction", json={"boxes": [[x, y, w, h], [0, 0, 8, 8]]},
                            headers=clinic.auth("practitioner"))
    pool = client.server.app[RUNTIME].media.pipeline.pool
    bounds = pool.limits
    pool.limits = dataclasses.replace(bounds, item_seconds=0.001)
    try:
        failed = await api.release(handle, purpose="social_media", status=422)
        assert failed["error"] == "decoder_failed"
        assert (await client.get(item["thumbnail_url"])).status == 422
    finally:
        pool.limits = bounds
    listed = await (await client.get("/v1/releases", params={"media_id": photo["id"]}, headers=clinic.auth("dpo"))).json()
    assert [i["id"] for i in listed["items"]] == [release["id"]]
    assert (await api.release(handle, purpose="social_media"))["rendition"] == "deidentified"  # the pool recovered
