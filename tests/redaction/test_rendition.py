"""The released de-identified file: every reviewed rectangle is filled opaque at full
resolution, nothing else changed beyond one fresh JPEG encode (PSNR against the same photo
released identifiable, as displayed), and no metadata (exiftool as the outside oracle)."""

from __future__ import annotations

from urllib.parse import urlsplit

import numpy as np

from tests.pipeline.leaks import identifying_tags, planted_markers
from tests.redaction.conftest import face_jpeg, pixels, psnr

FILL_MAX = 16  # JPEG noise inside a flat black area stays far below this
PSNR_OUTSIDE = 38.0  # dB, outside the filled rectangles (a quality-92 re-encode of a photo)


async def _file(client, clinic, release) -> bytes:
    resp = await client.get(urlsplit(release["download_url"]).path, headers=clinic.auth("marketing"))
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_the_released_file_fills_every_reviewed_box_and_nothing_else(api, client, clinic, exiftool):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())  # stored sideways with EXIF orientation 6, an ICC profile, a maker
    await api.consent(pid, purposes=["education"], identifiable=True)
    await api.consent(pid, purposes=["social_media"], identifiable=False)

    detected = (await api.redaction(photo["id"]))["boxes"]
    reviewed = detected + [[300, 400, 120, 60], [0, 0, 12, 12], [photo["width"] - 30, photo["height"] - 30, 30, 30]]
    resp = await client.put(f"/v1/media/{photo['id']}/redaction", json={"boxes": reviewed}, headers=clinic.auth("practitioner"))
    assert resp.status == 200, await resp.text()
    approval = await api.approve(photo["id"])
    assert sorted(approval["rects"]) == sorted(reviewed)

    original = await _file(client, clinic, await api.release(photo["id"], purpose="education"))
    redacted = await _file(client, clinic, await api.release(await api.handle(photo["id"], "social_media"), purpose="social_media"))
    shown, out = pixels(original, upright=True), pixels(redacted)
    assert out.shape == shown.shape == (photo["height"], photo["width"], 3)  # full resolution, as displayed

    filled = np.zeros(out.shape[:2], dtype=bool)
    for x, y, w, h in approval["rects"]:
        filled[y:y + h, x:x + w] = True
        inner = out[y + 2:y + h - 2, x + 2:x + w - 2]
        if w > 4 and h > 4:
            assert inner.max() <= FILL_MAX, (x, y, w, h)  # the fill's pixel values: opaque black
    near = np.zeros_like(filled)  # JPEG blocks touching a fill edge ring a little
    for x, y, w, h in approval["rects"]:
        near[max(0, y - 8):y + h + 8, max(0, x - 8):x + w + 8] = True
    outside = ~near
    assert outside.mean() > 0.5
    assert psnr(out[outside], shown[outside]) >= PSNR_OUTSIDE

    tags = exiftool.tags(redacted)
    assert identifying_tags(tags) == [] and planted_markers(redacted) == []
    assert not [k for k in tags if k.split(":")[0] in ("IFD0", "ExifIFD", "XMP", "IPTC", "GPS", "MakerNotes")]
    assert redacted.count(b"\xff\xe1") == 0 and redacted.count(b"\xff\xfe") == 0  # no APP1 (Exif/XMP), no comment


async def test_a_face_free_photo_goes_out_as_a_fresh_encode(api, client, clinic, exiftool):
    from tests.redaction.conftest import plain_jpeg

    pid = await api.patient()
    photo = await api.photo(pid, plain_jpeg(size=(320, 200)))
    await api.consent(pid, identifiable=False)
    seen = await api.redaction(photo["id"])
    assert seen["boxes"] == [] and seen["source"] == "detector"
    await api.approve(photo["id"], seen["digest"])
    data = await _file(client, clinic, await api.release(await api.handle(photo["id"])))
    stored = await (await client.get(f"/v1/media/{photo['id']}/content", headers=clinic.auth("records"))).read()
    assert data != stored and data[:2] == b"\xff\xd8"
    assert identifying_tags(exiftool.tags(data)) == []
