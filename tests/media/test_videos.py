"""Video upload, finishing job and playback, end to end: real PyAV, key store, blob store
and the job queue's own runner."""

from __future__ import annotations

import io
import secrets

import pytest
from sqlalchemy import select, text

from tests.pipeline.leaks import identifying_video_tags
from tests.pipeline.videos import make_video
from tests.support.jobs import drain
from vault.appkeys import RUNTIME
from vault.jobs.models import Job
from vault.media.models import MediaBlob


async def new_patient(client, clinic) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)}, headers=clinic.auth("practitioner"))
    return (await resp.json())["id"]


async def upload(client, clinic, pid, data: bytes, content_type="video/quicktime", headers=None):
    return await client.post(
        f"/v1/patients/{pid}/media", data=io.BytesIO(data), params={"phase": "before"},
        headers={**clinic.auth("practitioner"), "Content-Type": content_type, **(headers or {})},
    )


MEDIA_JOBS = ("media.finish_video", "media.shred_blob")


async def run_jobs(client, *, timeout: float = 600.0) -> None:
    """Run the media jobs (finishing, shredding the source) until those due are done. The
    bound only stops a hung run: a CI machine at a load of 20 once took over 120 s."""
    await drain(client.server.app[RUNTIME], *MEDIA_JOBS, timeout=timeout, due_only=True)


async def test_video_is_processing_then_stripped_ready_and_seekable(client, clinic, exiftool):
    original = make_video(seconds=3, rotation=90, metadata="udta")
    assert identifying_video_tags(exiftool.tags(original))  # the sample really carries metadata
    pid = await new_patient(client, clinic)
    resp = await upload(client, clinic, pid, original)
    assert resp.status == 201, await resp.text()
    media = await resp.json()
    assert media["kind"] == "video" and media["status"] == "processing"
    auth = clinic.auth("records")
    for path in ("content", "thumbnail"):
        busy = await client.get(f"/v1/media/{media['id']}/{path}", headers=auth)
        assert busy.status == 409 and (await busy.json())["error"] == "not_ready"

    await run_jobs(client)
    done = await (await client.get(f"/v1/media/{media['id']}", headers=auth)).json()
    assert done["status"] == "ready", done
    assert done["capture"]["rotation"] in (90, 270)
    stripped = await (await client.get(f"/v1/media/{media['id']}/content", headers=auth)).read()
    assert identifying_video_tags(exiftool.tags(stripped)) == {}
    thumb = await client.get(f"/v1/media/{media['id']}/thumbnail", headers=auth)
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"

    n = len(stripped)
    for header, expected in [("bytes=0-99", stripped[:100]), (f"bytes={n // 2}-{n // 2 + 4095}", stripped[n // 2 : n // 2 + 4096]), ("bytes=-500", stripped[-500:])]:
        part = await client.get(f"/v1/media/{media['id']}/content", headers={**auth, "Range": header})
        assert part.status == 206 and await part.read() == expected

    # the original with its metadata does not survive: no source row, its key and blob gone
    async with client.server.app[RUNTIME].db.session() as s:
        renditions = set((await s.execute(select(MediaBlob.rendition).where(MediaBlob.media_id == media["id"]))).scalars())
    assert renditions == {"original", "thumb256", "thumb1024"}


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (lambda: make_video(seconds=2)[:5000], "video/quicktime", 422),
        (lambda: b"\x00\x00\x00\x18ftypqt  " + secrets.token_bytes(20000), "video/quicktime", 422),
        (lambda: b"not a video at all" * 100, "video/mp4", 415),
    ],
    ids=["truncated", "garbage-after-ftyp", "not-video"],
)
async def test_bad_video_bodies_are_4xx_and_leave_nothing(client, clinic, settings, body, content_type, status):
    pid = await new_patient(client, clinic)
    blobs = settings.data_dir / "blobs"
    before = sum(1 for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else 0
    async with client.server.app[RUNTIME].db.session() as s:
        media_before = (await s.execute(text("SELECT COUNT(*) FROM media"))).scalar()
    resp = await upload(client, clinic, pid, body(), content_type)
    assert resp.status == status, await resp.text()
    after = sum(1 for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else 0
    assert after == before
    async with client.server.app[RUNTIME].db.session() as s:
        assert (await s.execute(text("SELECT COUNT(*) FROM media"))).scalar() == media_before


async def test_a_video_that_cannot_be_finished_fails_with_a_reason(client, clinic):
    """A crash half way is retried; a video PyAV cannot remux ends `failed` and its
    original is shredded."""
    pid = await new_patient(client, clinic)
    media = await (await upload(client, clinic, pid, make_video(seconds=2))).json()
    rt = client.server.app[RUNTIME]
    # make the stored source undecryptable: the job must give up cleanly, not loop
    async with rt.db.session() as s:
        source = (await s.execute(select(MediaBlob).where(MediaBlob.media_id == media["id"]))).scalar_one()
    await rt.keys.destroy_object(source.tenant_id, source.patient_id, source.id)
    await run_jobs(client)
    view = await (await client.get(f"/v1/media/{media['id']}", headers=clinic.auth("records"))).json()
    assert view["status"] == "failed" and view["failure_reason"]
    async with rt.db.session() as s:
        jobs = (await s.execute(select(Job.state).where(Job.kind == "media.finish_video",
                                                        Job.payload.contains(media["id"])))).scalars().all()
    assert "dead" not in jobs


async def test_signed_playback_links(client, clinic, other_clinic):
    pid = await new_patient(client, clinic)
    media = await (await upload(client, clinic, pid, make_video(seconds=2))).json()
    await run_jobs(client)
    resp = await client.post(f"/v1/media/{media['id']}/playback", headers=clinic.auth("records"))
    assert resp.status == 200
    link = await resp.json()
    assert "vt_" not in link["url"] and clinic.tokens["records"] not in link["url"]
    whole = await client.get(link["url"])  # no bearer header, as a <video> element does
    assert whole.status == 200 and whole.headers["Referrer-Policy"] == "no-referrer"
    body = await whole.read()
    part = await client.get(link["url"], headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == body[100:200]

    other_media = link["url"].replace(media["id"], "0" * 32)
    assert (await client.get(other_media)).status == 403  # the signature binds the media
    tampered = link["url"][:-4] + ("0000" if not link["url"].endswith("0000") else "1111")
    assert (await client.get(tampered)).status == 403
    assert (await client.post(f"/v1/media/{media['id']}/playback", headers=other_clinic.auth("records"))).status == 404
    assert (await client.post(f"/v1/media/{media['id']}/playback", headers=clinic.auth("marketing"))).status == 403

    tenants = client.server.app[RUNTIME].tenants
    for token_id in [t.id for t in await tenants.tokens(clinic.slug) if t.role == "records"]:
        await tenants.revoke_token(token_id, request_id="t")
    assert (await client.get(link["url"])).status == 403  # a revoked token's links die with it
