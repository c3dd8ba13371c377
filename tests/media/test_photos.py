"""Photo upload and fetch through HTTP, end to end: real pipeline, key store, blob store."""

from __future__ import annotations

import io
import secrets
import tempfile

import numpy as np
import pytest
from aiohttp import FormData
from PIL import Image, ImageOps
from sqlalchemy import text

from tests.pipeline.leaks import identifying_tags, planted_markers
from tests.pipeline.samples import heic_with_everything, jpeg_with_everything, png_with_everything, webp_with_everything
from vault.appkeys import RUNTIME

SAMPLES = {
    "jpeg": (lambda: jpeg_with_everything(orientation=6), "image/jpeg"),
    "jpeg-progressive": (lambda: jpeg_with_everything(progressive=True, trailer="samsung"), "image/jpeg"),
    "png": (lambda: png_with_everything(orientation=8), "image/png"),
    "webp": (lambda: webp_with_everything(orientation=3), "image/webp"),
    "heic": (lambda: heic_with_everything(orientation=6), "image/heic"),
}


async def new_patient(client, clinic) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)}, headers=clinic.auth("practitioner"))
    return (await resp.json())["id"]


async def upload(client, clinic, patient_id, data, content_type, *, params=None, headers=None):
    return await client.post(
        f"/v1/patients/{patient_id}/media", data=io.BytesIO(data) if isinstance(data, bytes) else data, params=params or {},
        headers={**clinic.auth("practitioner"), "Content-Type": content_type, **(headers or {})},
    )


def pixels(data: bytes) -> np.ndarray:
    if data[4:12] in (b"ftypheic", b"ftypmif1", b"ftypheix"):
        import pillow_heif

        pillow_heif.register_heif_opener()
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


@pytest.mark.parametrize("kind", list(SAMPLES))
async def test_upload_strips_metadata_keeps_pixels_and_orientation(client, clinic, exiftool, kind):
    make, content_type = SAMPLES[kind]
    original = make()
    pid = await new_patient(client, clinic)
    resp = await upload(client, clinic, pid, original, content_type, params={"phase": "before"})
    assert resp.status == 201, await resp.text()
    media = await resp.json()
    assert media["kind"] == "photo" and media["status"] == "ready" and media["phase"] == "before"
    assert set(media["faces"]) >= {"detected", "count", "boxes"}

    resp = await client.get(f"/v1/media/{media['id']}/content", headers=clinic.auth("records"))
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "private, no-cache"
    stored = await resp.read()
    assert identifying_tags(exiftool.tags(stored)) == []
    assert planted_markers(stored) == []
    assert np.array_equal(pixels(stored), pixels(original))  # lossless, same displayed orientation

    for size in (256, 1024):
        resp = await client.get(f"/v1/media/{media['id']}/thumbnail", params={"size": str(size)}, headers=clinic.auth("records"))
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        thumb = await resp.read()
        assert identifying_tags(exiftool.tags(thumb)) == [] and planted_markers(thumb) == []
        with Image.open(io.BytesIO(thumb)) as img:
            assert max(img.size) <= size

    meta = await (await client.get(f"/v1/media/{media['id']}", headers=clinic.auth("dpo"))).json()
    assert "GPS" not in repr(meta["capture"]).upper() or meta["capture"] == {}


async def test_multipart_upload_never_touches_temp_files(client, clinic, tmp_path, monkeypatch):
    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setenv("TMPDIR", str(empty))
    monkeypatch.setattr(tempfile, "tempdir", str(empty))
    pid = await new_patient(client, clinic)
    form = FormData()
    form.add_field("note", "ignored")
    form.add_field("file", jpeg_with_everything(size=(1600, 1200)), filename="IMG_0001.JPG", content_type="image/jpeg")
    resp = await client.post(f"/v1/patients/{pid}/media", data=form, headers=clinic.auth("practitioner"))
    assert resp.status == 201, await resp.text()
    assert list(empty.iterdir()) == []


async def test_range_requests_return_exact_slices(client, clinic):
    pid = await new_patient(client, clinic)
    media = await (await upload(client, clinic, pid, jpeg_with_everything(size=(2000, 1500)), "image/jpeg")).json()
    url, auth = f"/v1/media/{media['id']}/content", clinic.auth("records")
    whole = await (await client.get(url, headers=auth)).read()
    n = len(whole)
    for header, expected in [
        ("bytes=0-0", whole[:1]),
        ("bytes=0-99", whole[:100]),
        (f"bytes={n // 2}-{n // 2 + 999}", whole[n // 2 : n // 2 + 1000]),
        (f"bytes={n - 10}-", whole[-10:]),
        ("bytes=-25", whole[-25:]),
        (f"bytes=5-{n * 3}", whole[5:]),
    ]:
        resp = await client.get(url, headers={**auth, "Range": header})
        assert resp.status == 206, header
        assert await resp.read() == expected, header
        assert resp.headers["Content-Range"].endswith(f"/{n}")
    resp = await client.get(url, headers={**auth, "Range": f"bytes={n}-"})
    assert resp.status == 416
    head = await client.head(url, headers=auth)
    assert head.status == 200 and int(head.headers["Content-Length"]) == n and head.headers["ETag"]


async def _counts(client, blobs_dir) -> tuple[int, int, int]:
    async with client.server.app[RUNTIME].db.session() as s:
        media = (await s.execute(text("SELECT COUNT(*) FROM media"))).scalar()
        blobs = (await s.execute(text("SELECT COUNT(*) FROM media_blobs"))).scalar()
    files = sum(1 for p in blobs_dir.rglob("*") if p.is_file()) if blobs_dir.exists() else 0
    return media, blobs, files


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _polyglot() -> bytes:
    return b"%PDF-1.4\n" + jpeg_with_everything(trailer="")


BAD_INPUTS = {
    "empty": (lambda: b"", "image/jpeg", 422),
    "truncated": (lambda: jpeg_with_everything(trailer="")[:3000], "image/jpeg", 422),
    "garbage": (lambda: secrets.token_bytes(5000), "image/jpeg", 415),
    "pdf-polyglot": (_polyglot, "image/jpeg", 415),
    "wrong-content-type": (lambda: jpeg_with_everything(), "text/plain", 415),
    "mismatched-type": (lambda: jpeg_with_everything(), "image/png", 415),
    "unsupported-gif": (lambda: b"GIF89a" + bytes(200), "image/gif", 415),
    "pixel-bomb": (_bomb, "image/png", 413),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
async def test_bad_input_is_a_clear_4xx_and_leaves_nothing(client, clinic, settings, name):
    make, content_type, status = BAD_INPUTS[name]
    pid = await new_patient(client, clinic)
    blobs_dir = settings.data_dir / "blobs"
    before = await _counts(client, blobs_dir)
    resp = await upload(client, clinic, pid, make(), content_type)
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"type", "title", "status", "detail", "instance", "error", "details"}
    assert await _counts(client, blobs_dir) == before


async def test_over_the_size_cap_is_413(aiohttp_client, settings, make_clinic):
    from vault.app import create_app

    small = settings.replace(max_photo_bytes=50_000)
    client = await aiohttp_client(create_app(small))
    tenants = client.server.app[RUNTIME].tenants
    slug = "cap-" + secrets.token_hex(3)
    await tenants.create_tenant(slug, request_id="t")
    token = (await tenants.create_token(slug, "practitioner", label="t", request_id="t")).token
    auth = {"Authorization": f"Bearer {token}"}
    pid = (await (await client.post("/v1/patients", json={"external_ref": "x"}, headers=auth)).json())["id"]
    big = jpeg_with_everything(size=(1200, 900))
    assert len(big) > 50_000
    resp = await client.post(f"/v1/patients/{pid}/media", data=big, headers={**auth, "Content-Type": "image/jpeg"})
    assert resp.status == 413 and (await resp.json())["error"] == "too_large"
    chunked = await client.post(f"/v1/patients/{pid}/media", data=_chunks(big), headers={**auth, "Content-Type": "image/jpeg"})
    assert chunked.status == 413


async def _chunks(data: bytes):
    for i in range(0, len(data), 8192):
        yield data[i : i + 8192]


async def test_idempotent_retry_returns_the_same_media(client, clinic):
    pid = await new_patient(client, clinic)
    photo = jpeg_with_everything()
    key = {"Idempotency-Key": "cam-" + secrets.token_hex(8)}
    first = await upload(client, clinic, pid, photo, "image/jpeg", headers=key)
    again = await upload(client, clinic, pid, photo, "image/jpeg", headers=key)
    assert first.status == 201 and again.status == 200
    assert (await first.json())["id"] == (await again.json())["id"]
    other = await upload(client, clinic, pid, png_with_everything(), "image/png", headers=key)
    assert other.status == 409 and (await other.json())["error"] == "idempotency_conflict"
    listing = await (await client.get(f"/v1/patients/{pid}/media", headers=clinic.auth("records"))).json()
    assert len(listing["items"]) == 1


async def test_treatment_must_belong_to_the_patient(client, clinic):
    p1, p2 = await new_patient(client, clinic), await new_patient(client, clinic)
    resp = await client.post(f"/v1/patients/{p1}/treatments", json={"name": "Botulinum toxin, glabella", "performed_on": "2026-10-01", "area": "forehead"}, headers=clinic.auth("practitioner"))
    assert resp.status == 201
    treatment = (await resp.json())["id"]
    ok = await upload(client, clinic, p1, jpeg_with_everything(), "image/jpeg", params={"treatment_id": treatment, "phase": "before"})
    assert ok.status == 201
    wrong = await upload(client, clinic, p2, jpeg_with_everything(), "image/jpeg", params={"treatment_id": treatment})
    assert wrong.status == 404
    after = await upload(client, clinic, p1, jpeg_with_everything(), "image/jpeg", params={"treatment_id": treatment, "phase": "after"})
    listing = await (await client.get(f"/v1/patients/{p1}/media", headers=clinic.auth("records"))).json()
    assert listing["groups"][treatment] == {"before": [(await ok.json())["id"]], "after": [(await after.json())["id"]]}
    treatments = await (await client.get(f"/v1/patients/{p1}/treatments", headers=clinic.auth("records"))).json()
    assert treatments["items"][0]["area"] == "forehead"


async def test_another_tenant_gets_404_on_every_media_path(client, clinic, other_clinic):
    pid = await new_patient(client, clinic)
    mid = (await (await upload(client, clinic, pid, jpeg_with_everything(), "image/jpeg")).json())["id"]
    for path in (f"/v1/media/{mid}", f"/v1/media/{mid}/content", f"/v1/media/{mid}/thumbnail", f"/v1/patients/{pid}/media"):
        resp = await client.get(path, headers=other_clinic.auth("records"))
        assert resp.status == 404, path
    resp = await upload(client, other_clinic, pid, jpeg_with_everything(), "image/jpeg")
    assert resp.status == 404


async def test_faces_are_flagged_and_a_review_overrides(client, clinic):
    from skimage import data as samples

    def jpeg(array) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "JPEG", quality=92)
        return buf.getvalue()

    pid = await new_patient(client, clinic)
    face = await (await upload(client, clinic, pid, jpeg(samples.astronaut()), "image/jpeg")).json()
    assert face["faces"]["detected"] and face["faces"]["count"] >= 1 and face["faces"]["boxes"]
    plain = await (await upload(client, clinic, pid, jpeg(samples.rocket()), "image/jpeg")).json()
    assert plain["faces"]["detected"] is False and plain["faces"]["count"] == 0

    resp = await client.patch(f"/v1/media/{plain['id']}", json={"identifiable": True}, headers=clinic.auth("practitioner"))
    assert resp.status == 200
    assert (await resp.json())["faces"]["identifiable"] is True
    resp = await client.patch(f"/v1/media/{face['id']}", json={"identifiable": False}, headers=clinic.auth("dpo"))
    assert (await resp.json())["faces"]["identifiable"] is False


async def test_blobs_at_rest_are_ciphertext(client, clinic, settings):
    pid = await new_patient(client, clinic)
    photo = jpeg_with_everything(trailer="")
    mid = (await (await upload(client, clinic, pid, photo, "image/jpeg")).json())["id"]
    stripped = await (await client.get(f"/v1/media/{mid}/content", headers=clinic.auth("records"))).read()
    thumb = await (await client.get(f"/v1/media/{mid}/thumbnail", headers=clinic.auth("records"))).read()
    files = [p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file()]
    assert len(files) >= 3
    for f in files:
        raw = f.read_bytes()
        assert pid.encode() not in f.as_posix().encode() and mid.encode() not in f.as_posix().encode()
        for plain in (stripped[200:264], thumb[200:264], b"\xff\xd8\xff"):
            assert plain not in raw[:4] + raw[64:]  # header excluded: it is random salt/nonce
