"""Policy ``review`` (the default): nothing de-identified is listed or released before a
person approves the exact redaction; approval then release works and the release records
the approval; any change voids it; ``auto`` keeps the detector-only rules."""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy import select

from tests.redaction.conftest import face_jpeg, pixels, plain_jpeg
from vault.appkeys import RUNTIME
from vault.audit.models import AuditEntry
from vault.consent.models import Release
from vault.media.models import Media, MediaBlob
from vault.redaction.models import RedactionApproval
from vault.redaction.state import RENDITION_FULL, RENDITION_THUMB


async def _download(client, clinic, release):
    return await client.get(urlsplit(release["download_url"]).path, headers=clinic.auth("marketing"))


async def _reviews(client, clinic, state, role="practitioner"):
    resp = await client.get("/v1/redaction-reviews", params={"state": state}, headers=clinic.auth(role))
    assert resp.status == 200, await resp.text()
    return {i["media_id"]: i for i in (await resp.json())["items"]}


async def test_the_policy_defaults_to_review_and_is_audited(api, client, clinic):
    resp = await client.get("/v1/release-policy", headers=clinic.auth("dpo"))
    assert (await resp.json())["deidentified"] == "review"
    await api.policy("auto")
    assert (await (await client.get("/v1/release-policy", headers=clinic.auth("dpo"))).json())["deidentified"] == "auto"
    bad = await client.put("/v1/release-policy", json={"deidentified": "never"}, headers=clinic.auth("dpo"))
    assert bad.status == 422
    await api.policy("review")
    async with client.server.app[RUNTIME].db.session() as session:
        actions = [a for a, in (await session.execute(select(AuditEntry.action).where(AuditEntry.tenant_id == clinic.id)))]
    assert actions.count("release_policy.write") == 2 and "release_policy.read" in actions


async def test_nothing_deidentified_before_approval_then_approval_releases(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    assert photo["faces"]["boxes"]
    await api.consent(pid, purposes=["education"], identifiable=False)
    handle = await api.handle(photo["id"])

    # Before approval: not listed, not releasable, waiting in the review queue.
    listed = await api.releasable(None)
    assert not any(i["rendition"] == "deidentified" for i in listed.values()) and (handle, "education") not in listed
    assert (await api.release(handle, status=403))["details"]["reason"] == "needs_review"
    assert (await api.release(photo["id"], status=403))["details"]["reason"] == "not_releasable"
    pending = await _reviews(client, clinic, "pending")
    assert pending[photo["id"]]["purposes"] == ["education"] and photo["id"] not in await _reviews(client, clinic, "approved")
    # A practitioner's "not identifiable" face review no longer opens release under review.
    resp = await client.patch(f"/v1/media/{photo['id']}", json={"identifiable": False}, headers=clinic.auth("practitioner"))
    assert resp.status == 200
    assert (await api.release(handle, status=403))["details"]["reason"] == "needs_review"

    # The reviewer sees the boxes, their digest and the full-resolution redacted rendition.
    seen = await api.redaction(photo["id"])
    assert seen["state"] == "pending" and seen["source"] == "detector" and seen["boxes"] and len(seen["digest"]) == 64
    preview = await client.get(seen["preview_url"], headers=clinic.auth("practitioner"))
    assert preview.status == 200 and preview.content_type == "image/jpeg"
    assert preview.headers["X-Redaction-Digest"] == seen["digest"]
    assert pixels(await preview.read()).shape[:2] == (photo["height"], photo["width"])  # full resolution, upright

    approval = await api.approve(photo["id"], seen["digest"])
    assert approval["digest"] == seen["digest"] and approval["rects"] == seen["boxes"]
    assert photo["id"] in await _reviews(client, clinic, "approved", role="dpo")
    assert photo["id"] not in await _reviews(client, clinic, "pending")

    item = (await api.releasable("education"))[(handle, "education")]
    assert (await client.get(item["thumbnail_url"])).status == 200
    release = await api.release(handle)
    assert release["rendition"] == "deidentified"
    async with client.server.app[RUNTIME].db.session() as session:
        assert (await session.get(Release, release["id"])).approval_id == approval["id"]
    by_dpo = await (await client.get("/v1/releases", params={"media_id": photo["id"]}, headers=clinic.auth("dpo"))).json()
    assert [(i["id"], i["approval_id"]) for i in by_dpo["items"]] == [(release["id"], approval["id"])]
    resp = await _download(client, clinic, release)
    assert resp.status == 200
    assert await resp.read() == await preview_bytes(client, clinic, seen)  # exactly what the reviewer saw


async def preview_bytes(client, clinic, seen) -> bytes:
    resp = await client.get(seen["preview_url"], headers=clinic.auth("dpo"))
    assert resp.status == 200
    return await resp.read()


async def test_a_changed_box_voids_the_approval(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    await api.consent(pid, identifiable=False)
    handle = await api.handle(photo["id"])
    first = await api.approve(photo["id"])
    made_before = await api.release(handle)

    # A reviewer adds what the detector missed (a name badge, say).
    boxes = (await api.redaction(photo["id"]))["boxes"] + [[10, 10, 40, 20]]
    resp = await client.put(f"/v1/media/{photo['id']}/redaction", json={"boxes": boxes}, headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    changed = await resp.json()
    assert changed["state"] == "pending" and changed["approval"] is None and changed["digest"] != first["digest"]
    assert changed["source"] == "reviewer" and sorted(changed["boxes"]) == sorted(boxes)
    async with client.server.app[RUNTIME].db.session() as session:
        assert (await session.get(RedactionApproval, first["id"])).voided_at is not None

    stale = await api.approve(photo["id"], first["digest"], status=409)
    assert stale["details"]["digest"] == changed["digest"]
    assert (await api.release(handle, status=403))["details"]["reason"] == "needs_review"
    assert (handle, "education") not in await api.releasable()
    # A release made under the voided approval is not downloadable any more either.
    resp = await _download(client, clinic, made_before)
    assert resp.status == 403 and (await resp.json())["details"]["reason"] == "needs_review"

    second = await api.approve(photo["id"], changed["digest"])
    release = await api.release(handle)
    async with client.server.app[RUNTIME].db.session() as session:
        assert (await session.get(Release, release["id"])).approval_id == second["id"]
    out = pixels(await (await _download(client, clinic, release)).read())
    assert out[12:28, 12:48].max() <= 16  # the added box is filled
    # Re-sending the same boxes changes nothing and keeps the approval.
    same = await (await client.put(f"/v1/media/{photo['id']}/redaction", json={"boxes": boxes},
                                   headers=clinic.auth("practitioner"))).json()
    assert same["state"] == "approved" and same["approval"]["id"] == second["id"]


async def test_an_identifiable_mark_blocks_release_and_only_a_dpo_clears_it(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    await api.consent(pid, identifiable=False)
    handle = await api.handle(photo["id"])
    await api.approve(photo["id"])
    path = f"/v1/media/{photo['id']}/redaction"

    marked = await client.put(path, json={"identifiable": True}, headers=clinic.auth("practitioner"))
    assert marked.status == 200 and (await marked.json())["state"] == "identifiable"
    assert (await api.release(handle, status=403))["details"]["reason"] == "needs_review"
    await api.approve(photo["id"], status=409)
    assert photo["id"] not in await _reviews(client, clinic, "pending")
    for attempt in ((path, "put", {"identifiable": False}), (f"/v1/media/{photo['id']}", "patch", {"identifiable": False}),
                    (f"/v1/media/{photo['id']}", "patch", {"identifiable": None})):
        resp = await client.request(attempt[1].upper(), attempt[0], json=attempt[2], headers=clinic.auth("practitioner"))
        assert resp.status == 403, attempt
    cleared = await client.put(path, json={"identifiable": False}, headers=clinic.auth("dpo"))
    assert cleared.status == 200 and (await cleared.json())["state"] == "pending"  # the mark voided the approval
    await api.approve(photo["id"])
    assert (await api.release(handle))["rendition"] == "deidentified"


async def test_bad_boxes_are_refused_and_leave_nothing(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid, plain_jpeg(size=(96, 64)))
    path = f"/v1/media/{photo['id']}/redaction"
    before = await api.redaction(photo["id"])
    for body in ({"boxes": [[90, 0, 10, 10]]}, {"boxes": [[0, 0, 0, 5]]}, {"boxes": [[1, 2, 3]]}, {"boxes": [[-1, 0, 4, 4]]},
                 {}, {"boxes": "all"}, {"boxes": [[0, 0, 4, 4]], "extra": 1}):
        resp = await client.put(path, json=body, headers=clinic.auth("practitioner"))
        assert resp.status in (400, 422), (body, resp.status)
    assert (await api.redaction(photo["id"]))["digest"] == before["digest"]
    bad = await client.post(f"{path}/approve", json={"digest": "nothex"}, headers=clinic.auth("dpo"))
    assert bad.status == 422
    assert (await client.get(f"{path}/preview", params={"digest": "0" * 64}, headers=clinic.auth("dpo"))).status == 409


async def test_auto_behaves_as_the_detector_only_gate(api, client, clinic):
    await api.policy("auto")
    pid = await api.patient()
    face, clear, assumed = await api.photo(pid, face_jpeg()), await api.photo(pid), await api.photo(pid)
    await api.set(Media, assumed["id"], faces_detected=True, faces_assumed=True)
    await api.consent(pid, identifiable=False)
    listed = await api.releasable()
    for media in (face, clear):
        handle = await api.handle(media["id"])
        assert listed[(handle, "education")]["rendition"] == "deidentified"
        release = await api.release(handle)
        async with client.server.app[RUNTIME].db.session() as session:
            assert (await session.get(Release, release["id"])).approval_id is None
        assert (await _download(client, clinic, release)).status == 200
    assumed_handle = await api.handle(assumed["id"])
    assert (assumed_handle, "education") not in listed
    assert (await api.release(assumed_handle, status=403))["details"]["reason"] == "needs_review"
    # As today, a person's "not identifiable" opens a photo the detector could not search.
    resp = await client.patch(f"/v1/media/{assumed['id']}", json={"identifiable": False}, headers=clinic.auth("practitioner"))
    assert resp.status == 200
    assert (await api.release(assumed_handle))["rendition"] == "deidentified"
    # Switching back to review closes what nobody approved, at once.
    await api.policy("review")
    assert not any(i["rendition"] == "deidentified" for i in (await api.releasable()).values())
    assert (await api.release(await api.handle(face["id"]), status=403))["details"]["reason"] == "needs_review"


async def test_marketing_thumbnails_are_rendered_once_and_stored(api, client, clinic, monkeypatch):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    await api.consent(pid, identifiable=False)
    await api.approve(photo["id"])  # renders the full-resolution rendition and its thumbnail, once
    async with client.server.app[RUNTIME].db.session() as session:
        stored = {b.rendition: b for b in (await session.execute(
            select(MediaBlob).where(MediaBlob.media_id == photo["id"]))).scalars()}
    assert {RENDITION_FULL, RENDITION_THUMB} <= set(stored)
    blob = await client.server.app[RUNTIME].store.read(stored[RENDITION_THUMB].id)
    assert b"\xff\xd8\xff" not in blob[:64]  # sealed at rest like every rendition

    pipeline = client.server.app[RUNTIME].media.pipeline

    async def no_rendering(*args, **kwargs):
        raise AssertionError("redacted per request")

    monkeypatch.setattr(pipeline, "render_redaction", no_rendering)
    item = (await api.releasable())[(await api.handle(photo["id"]), "education")]
    first, second = await client.get(item["thumbnail_url"]), await client.get(item["thumbnail_url"])
    assert first.status == second.status == 200 and await first.read() == await second.read()
    small = pixels(await first.read())
    x, y, w, h = photo["faces"]["boxes"][0]
    scale = small.shape[1] / photo["width"]
    cx, cy = int((x + w / 2) * scale), int((y + h / 2) * scale)
    assert small[cy - 3:cy + 3, cx - 3:cx + 3].max() <= 16  # made from the redacted rendition
    assert (await api.release(await api.handle(photo["id"])))["rendition"] == "deidentified"


async def test_erasure_takes_the_redaction_with_it(api, client, clinic):
    from keys.errors import KeyDestroyed, KeyNotFound
    import pytest

    from tests.support.jobs import drain
    from vault.redaction.models import Redaction

    rt = client.server.app[RUNTIME]
    pid = await api.patient()
    photo, other = await api.photo(pid, face_jpeg()), await api.photo(pid, face_jpeg())
    await api.consent(pid, identifiable=False)
    for media in (photo, other):
        await api.approve(media["id"])
    async with rt.db.session() as session:
        redacted = {b.id for b in (await session.execute(select(MediaBlob).where(
            MediaBlob.media_id.in_([photo["id"], other["id"]]), MediaBlob.rendition.in_([RENDITION_FULL, RENDITION_THUMB])
        ))).scalars()}
    assert len(redacted) == 4

    resp = await client.delete(f"/v1/media/{photo['id']}", headers=clinic.auth("dpo"))
    assert resp.status in (200, 202, 204), await resp.text()
    await drain(rt, "lifecycle.purge_media")
    resp = await client.post(f"/v1/patients/{pid}/erasure", json={"reason": "asked"}, headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    await drain(rt, "lifecycle.purge_patient")
    async with rt.db.session() as session:
        assert await session.get(Redaction, photo["id"]) is None and await session.get(Redaction, other["id"]) is None
    for blob_id in redacted:  # the redacted renditions were shredded with the photo and the patient
        with pytest.raises((KeyDestroyed, KeyNotFound)):
            await rt.keys.object_key(clinic.id, pid, blob_id)


async def test_the_review_queue_pages_by_keyset(api, client, clinic, other_api):
    pid = await api.patient()
    photos = sorted([(await api.photo(pid))["id"] for _ in range(3)])
    await api.consent(pid, identifiable=False, purposes=["education", "publication"])
    other = await other_api.patient()
    elsewhere = (await other_api.photo(other))["id"]
    await other_api.consent(other, identifiable=False)  # another tenant's: never listed here
    seen, cursor = [], None
    while True:
        params = {"state": "pending", "limit": "1", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/v1/redaction-reviews", params=params, headers=clinic.auth("dpo"))).json()
        assert len(page["items"]) <= 1
        seen += [(i["media_id"], tuple(i["purposes"])) for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert [s for s in seen if s[0] in photos] == [(m, ("education", "publication")) for m in photos]
    assert elsewhere not in {m for m, _ in seen}
    bad = await client.get("/v1/redaction-reviews", params={"state": "maybe"}, headers=clinic.auth("dpo"))
    assert bad.status == 422
