"""Issue 11 item 3: no self-deadlock. 16 concurrent video uploads and 16 photo uploads
while thumbnail reads keep answering, on the real app, blob store and decoder workers.
(Six were enough to hang a node for good when the video probe's thread waited on a blob
read queued to the same default pool.) The only timing is a generous hang bound."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import secrets

import pytest

from tests.media.test_videos import run_jobs
from tests.pipeline.samples import picture
from tests.pipeline.videos import make_video

HANG_BOUND_S = 600


@pytest.fixture
async def app(settings):
    from vault.app import create_app

    # The HTTP layer's own upload caps are not what this test is about.
    return create_app(dataclasses.replace(settings, max_uploads=64, max_uploads_per_token=64, decoder_workers=2))


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    picture(640, 480, seed=seed).save(out, "JPEG", quality=85)
    return out.getvalue()


async def test_concurrent_video_and_photo_uploads_while_thumbnails_answer(client, clinic):
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)},
                             headers=clinic.auth("practitioner"))
    pid = (await resp.json())["id"]
    auth = clinic.auth("practitioner")
    first = await client.post(f"/v1/patients/{pid}/media", data=jpeg(0), params={"phase": "before"},
                              headers={**auth, "Content-Type": "image/jpeg"})
    assert first.status == 201
    thumb_of = (await first.json())["id"]
    video = make_video(seconds=2)

    async def upload(data: bytes, mime: str) -> int:
        r = await client.post(f"/v1/patients/{pid}/media", data=io.BytesIO(data), params={"phase": "before"},
                              headers={**auth, "Content-Type": mime})
        await r.read()
        return r.status

    stop = asyncio.Event()
    thumbs: list[int] = []

    async def read_thumbnails() -> None:
        while not stop.is_set():
            r = await client.get(f"/v1/media/{thumb_of}/thumbnail", headers=clinic.auth("records"))
            await r.read()
            thumbs.append(r.status)
            await asyncio.sleep(0.05)

    reader = asyncio.create_task(read_thumbnails())
    uploads = [upload(video, "video/quicktime") for _ in range(16)] + [upload(jpeg(i + 1), "image/jpeg") for i in range(16)]
    try:
        statuses = await asyncio.wait_for(asyncio.gather(*uploads), HANG_BOUND_S)
    finally:
        stop.set()
        await asyncio.wait_for(reader, 60)
    assert statuses == [201] * 32
    assert thumbs and set(thumbs) == {200}
    # The finishing jobs (remux, poster, faces) also go through the workers; all finish.
    await asyncio.wait_for(run_jobs(client), HANG_BOUND_S)
    listing = await (await client.get(f"/v1/patients/{pid}/media", headers=clinic.auth("records"))).json()
    items = listing["items"] if isinstance(listing, dict) else listing
    assert sum(1 for m in items if m["kind"] == "video" and m["status"] == "ready") == 16
