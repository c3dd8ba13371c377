"""Before/after composite releases (issue 18, item 5): both photos side by side at the same
height and scale, labelled, rendered in a decoder worker into a fresh JPEG with no
metadata; refused with the gate's reason when either photo is not releasable; one
download; recalled when a withdrawal reaches either photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.pipeline.leaks import identifying_tags
from vault.appkeys import RUNTIME
from vault.pipeline.composite import layout

#: the stripe each test photo carries across 40-60 % of its height (the scale check)
STRIPE = (0.4, 0.6)


def striped(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    """A flat photo with a black horizontal stripe at a fixed fraction of its height."""
    image = Image.new("RGB", size, color)
    w, h = size
    image.paste((0, 0, 0), (0, int(h * STRIPE[0]), w, int(h * STRIPE[1])))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


async def composite(client, clinic, before: str, after: str, *, purpose: str = "marketing", status: int = 201) -> dict:
    resp = await client.post("/v1/releases/composites", headers=clinic.auth("marketing"),
                             json={"before": before, "after": after, "purpose": purpose, "recipient": "Clinic Instagram"})
    assert resp.status == status, await resp.text()
    return await resp.json()


def dark_rows(column: np.ndarray) -> tuple[int, int]:
    rows = np.nonzero(column.max(axis=-1) < 60)[0]
    return int(rows.min()), int(rows.max())


async def test_composite_same_height_and_scale_no_metadata_one_download(api, client, clinic, exiftool):
    pid = await api.patient()
    before = await api.photo(pid, striped((480, 360), (200, 40, 40)))  # 4:3, taller
    after = await api.photo(pid, striped((240, 300), (40, 40, 200)))  # 4:5, shorter
    grant = await api.consent(pid, purposes=["marketing"], identifiable=True)
    made = await composite(client, clinic, before["id"], after["id"])
    assert made["rendition"] == "original" and (made["before"], made["after"]) == (before["id"], after["id"])

    resp = await client.get(f"/v1/releases/{made['id']}/download", headers=clinic.auth("marketing"))
    assert resp.status == 200
    data = await resp.read()
    again = await client.get(f"/v1/releases/{made['id']}/download", headers=clinic.auth("marketing"))
    assert again.status == 410  # downloaded once

    plan = layout((480, 360), (240, 300))
    out = pixels(data)
    assert out.shape[:2] == (plan.band + plan.height, plan.size[0]) and plan.height == 300
    assert plan.widths == (400, 240)
    left, right = out[plan.band:, :plan.widths[0]], out[plan.band:, plan.left(1):]
    assert right.shape[1] == plan.widths[1]
    # Same height: both halves fill the photo rows; same scale: the stripes (the same
    # fraction of each photo) sit on the same rows.
    assert left.shape[0] == right.shape[0] == plan.height
    (lt, lb), (rt, rb) = dark_rows(left[:, 10]), dark_rows(right[:, 10])
    assert abs(lt - rt) <= 2 and abs(lb - rb) <= 2 and abs(lt - int(0.4 * plan.height)) <= 2
    assert np.abs(left[5, 10] - (200, 40, 40)).max() <= 12 and np.abs(right[5, 10] - (40, 40, 200)).max() <= 12
    band = out[:plan.band]
    assert band.min() < 100 and np.median(band) > 240  # the labels, black on white

    tags = exiftool.tags(data)
    assert identifying_tags(tags) == []
    assert not [k for k in tags if k.split(":")[0] in ("IFD0", "ExifIFD", "XMP", "IPTC", "GPS", "MakerNotes", "ICC_Profile")]
    assert data.count(b"\xff\xe1") == 0 and data.count(b"\xff\xfe") == 0  # no APP1 (Exif/XMP), no comment

    # A withdrawal reaching either photo recalls the composite.
    recalled = await api.withdraw(grant["id"])
    assert made["id"] in {r["id"] for r in recalled["recall"]}
    listed = await client.get("/v1/releases", params={"state": "recalled"}, headers=clinic.auth("marketing"))
    row = next(r for r in (await listed.json())["items"] if r["id"] == made["id"])
    assert (row["media_id"], row["pair_media_id"]) == (before["id"], after["id"])


async def test_composite_refused_when_either_photo_is_not_releasable(api, client, clinic, other_clinic):
    pid = await api.patient()
    a = await api.photo(pid, striped((200, 150), (90, 120, 90)))
    b = await api.photo(pid, striped((200, 150), (90, 120, 90)))
    c = await api.photo(pid, striped((200, 150), (90, 120, 90)))
    # a and b: identifiable marketing consent; c: education only
    await api.consent(pid, purposes=["marketing"], identifiable=True, media_ids=[a["id"], b["id"]])
    await api.consent(pid, purposes=["education"], identifiable=True, media_ids=[c["id"]])
    for before, after in ((a, c), (c, b)):
        refused = await composite(client, clinic, before["id"], after["id"], status=403)
        assert refused["error"] == "consent_required" and refused["details"]["reason"] == "no_consent"
    # a photo allowed only de-identified is not releasable by media id (the reason says nothing more)
    d = await api.photo(pid, striped((200, 150), (90, 120, 90)))
    await api.consent(pid, purposes=["marketing"], identifiable=False, media_ids=[d["id"]])
    refused = await composite(client, clinic, a["id"], d["id"], status=403)
    assert refused["details"]["reason"] == "not_releasable"
    # two patients' photos are no pair; the same photo twice neither; another tenant's: 404
    other = await api.patient()
    e = await api.photo(other, striped((200, 150), (90, 120, 90)))
    await api.consent(other, purposes=["marketing"], identifiable=True)
    assert (await composite(client, clinic, a["id"], e["id"], status=422))["details"]["reason"] == "not_a_pair"
    assert (await composite(client, clinic, a["id"], a["id"], status=422))["details"]["reason"] == "not_a_pair"
    resp = await client.post("/v1/releases/composites", headers=other_clinic.auth("marketing"),
                             json={"before": a["id"], "after": b["id"], "purpose": "marketing", "recipient": "x"})
    assert resp.status == 404
    # nothing was recorded by the refusals
    async with client.server.app[RUNTIME].db.session() as session:
        from sqlalchemy import select

        from vault.consent.models import Release
        rows = (await session.execute(select(Release).where(Release.patient_id == pid))).scalars().all()
    assert rows == []
    # and the allowed pair goes
    await composite(client, clinic, a["id"], b["id"])


async def test_composite_fills_each_photos_rectangles_before_scaling(client):
    """The worker op fills each photo's rectangles (a de-identified photo's approved ones)
    in its own pixels, before both are scaled to the same height."""
    pipeline = client.server.app[RUNTIME].releases.pipeline
    first, second = striped((400, 300), (230, 230, 230)), striped((300, 300), (230, 230, 230))
    rects = [[[20, 20, 100, 60]], [[150, 10, 80, 80]]]
    data = await pipeline.composite([first, second], rects, sizes=[(400, 300), (300, 300)])
    plan = layout((400, 300), (300, 300))
    out = pixels(data)
    assert plan.height == 300  # no scaling here: the rectangles land where they were drawn
    x, y, w, h = rects[0][0]
    assert out[plan.band + y + 3:plan.band + y + h - 3, x + 3:x + w - 3].max() <= 16
    x, y, w, h = rects[1][0]
    x0 = plan.left(1)
    assert out[plan.band + y + 3:plan.band + y + h - 3, x0 + x + 3:x0 + x + w - 3].max() <= 16
    assert out[plan.band + 250:plan.band + 290, 5:390].min() > 200  # the rest untouched (light grey)

    # Scaled down (the second photo taller): the fill scales with the photo, nothing shows.
    tall = striped((300, 600), (230, 230, 230))
    data = await pipeline.composite([first, tall], [[], [[100, 200, 100, 100]]], sizes=[(400, 300), (300, 600)])
    plan = layout((400, 300), (300, 600))
    out = pixels(data)
    assert plan.widths == (400, 150) and out.shape[0] == plan.band + 300
    x0 = plan.left(1)
    assert out[plan.band + 100 + 3:plan.band + 150 - 3, x0 + 50 + 3:x0 + 100 - 3].max() <= 16
