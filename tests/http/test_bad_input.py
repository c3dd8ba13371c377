"""Bad input found by fuzzing (issue 11, item 7): each gets a JSON 4xx — or, for a body
that fails after its status line went out, a cut connection — stores nothing, and the
service keeps answering. No mocks: real server, real pipeline, raw sockets where a
client library would refuse to send the input."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets

import numpy as np
from PIL import Image
from sqlalchemy import select, text

from tests.pipeline.samples import jpeg_with_everything
from tests.pipeline.videos import make_video
from vault.appkeys import RUNTIME
from vault.tenants.models import ApiToken

HANG = 30  # seconds: a generous bound that only a hung request reaches


async def new_patient(client, clinic) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)}, headers=clinic.auth("practitioner"))
    assert resp.status == 201
    return (await resp.json())["id"]


async def counts(client, settings) -> tuple[int, int, int]:
    async with client.server.app[RUNTIME].db.session() as s:
        media = (await s.execute(text("SELECT COUNT(*) FROM media"))).scalar()
        blobs = (await s.execute(text("SELECT COUNT(*) FROM media_blobs"))).scalar()
    folder = settings.data_dir / "blobs"
    files = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
    return media, blobs, files


async def still_answers(client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200


async def raw(client, request: bytes, *, read: bool = True) -> bytes:
    """Send bytes as they are and read until the server closes (or HANG passes)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        if not read:
            return b""
        return await asyncio.wait_for(reader.read(), HANG)
    finally:
        writer.close()


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_empty_multipart_is_a_json_400(client, clinic, settings):
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    for body in (b"--B\r\n--B--\r\n", b"--B\r\n\r\n--B--\r\n", b"--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--\r\n", b"--B"):
        resp = await client.post(f"/v1/patients/{pid}/media", data=body,
                                 headers={**clinic.auth("practitioner"), "Content-Type": "multipart/form-data; boundary=B"})
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"] == "bad_request"
    assert await counts(client, settings) == before
    await still_answers(client)


async def test_mp4_on_which_ffmpeg_reports_enomem_is_422(client, clinic, settings):
    video = bytearray(make_video(seconds=1, fmt="mp4", audio=False, subtitle=False, timecode=False, metadata=None))
    stts = video.find(b"stts")
    video[stts + 8:stts + 12] = (0x20000000).to_bytes(4, "big")  # a sample table no allocation can hold
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    resp = await client.post(f"/v1/patients/{pid}/media", data=bytes(video),
                             headers={**clinic.auth("practitioner"), "Content-Type": "video/mp4"})
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"] == "corrupt_media"
    assert await counts(client, settings) == before
    await still_answers(client)


async def _photo(client, clinic, data: bytes | None = None) -> str:
    pid = await new_patient(client, clinic)
    resp = await client.post(f"/v1/patients/{pid}/media", data=io.BytesIO(data or jpeg_with_everything()),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def test_uppercase_media_id_in_signed_urls_is_4xx(client, clinic):
    media_id = await _photo(client, clinic)
    link = await (await client.post(f"/v1/media/{media_id}/playback", headers=clinic.auth("practitioner"))).json()
    path, _, query = link["url"].partition("?")
    resp = await client.get(path.upper().replace("/V1/PLAYBACK/", "/v1/playback/") + "?" + query)
    assert resp.status == 403 and (await resp.json())["error"] == "forbidden"

    async with client.server.app[RUNTIME].db.session() as s:
        token_id = (await s.execute(select(ApiToken.id).where(ApiToken.tenant_id == clinic.id).limit(1))).scalar()
    resp = await client.get(f"/v1/releasable/{media_id.upper()}/thumbnail", params={
        "purpose": "education", "rendition": "original", "token": token_id, "expires": "4102444800", "signature": "0" * 64})
    assert 400 <= resp.status < 500 and "error" in await resp.json()
    await still_answers(client)


async def test_range_of_thousands_of_digits(client, clinic):
    media_id = await _photo(client, clinic)
    url, auth = f"/v1/media/{media_id}/content", clinic.auth("records")
    digits = "9" * 5000
    resp = await client.get(url, headers={**auth, "Range": f"bytes={digits}-"})
    assert resp.status == 416 and (await resp.json())["error"] == "range_not_satisfiable"
    resp = await client.get(url, headers={**auth, "Range": f"bytes=0-{digits}"})
    assert resp.status == 206
    resp = await client.get(url, headers={**auth, "Range": f"bytes=-{digits}"})
    assert resp.status == 206 and resp.headers["Content-Range"].startswith("bytes 0-")
    await still_answers(client)


async def test_deeply_nested_json_is_400(client, clinic):
    for body in ("[" * 60_000, '{"a":' * 10_000 + "1" + "}" * 10_000, '{"external_ref": ' + "[" * 900 + "]" * 900 + "}"):
        resp = await client.post("/v1/patients", data=body.encode(),
                                 headers={**clinic.auth("practitioner"), "Content-Type": "application/json"})
        assert 400 <= resp.status < 500, await resp.text()
        assert "error" in await resp.json()
    await still_answers(client)


async def test_oversized_header_is_json_400_echoing_nothing(client, clinic, caplog):
    token = clinic.tokens["practitioner"]
    with caplog.at_level(logging.DEBUG):
        response = await raw(client, (f"GET /v1/patients HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {token}{'A' * 9000}"
                                      "\r\n\r\n").encode())
    status, headers, body = split(response)
    assert status == 400 and headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["error"] == "bad_request"
    assert token[:8].encode() not in response and b"Bearer" not in response
    from vault.logs import JsonFormatter

    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert token[:8] not in logged and "Bearer" not in logged
    await still_answers(client)


async def test_client_that_disconnects_is_an_abort_not_a_500(client, clinic, settings, caplog):
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    head = (f"POST /v1/patients/{pid}/media HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {clinic.tokens['practitioner']}\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: 5000000\r\n\r\n").encode()
    with caplog.at_level(logging.INFO):
        await raw(client, head + jpeg_with_everything()[:20_000], read=False)
        for _ in range(100):  # the handler notices the reset at its next read
            await asyncio.sleep(0.05)
            if any(getattr(r, "status", None) == 499 for r in caplog.records):
                break
    assert any(getattr(r, "status", None) == 499 for r in caplog.records), [(r.getMessage(), getattr(r, "status", None)) for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info or getattr(r, "status", None) == 500]
    assert await counts(client, settings) == before
    await still_answers(client)


def _big_jpeg() -> bytes:
    """Over one 1 MiB blob segment, so the body fails after its first segment went out."""
    noise = np.random.default_rng(3).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "JPEG", quality=95)
    assert 1 << 20 < len(out.getvalue()) < 8 << 20
    return out.getvalue()


async def test_integrity_failure_mid_stream_cuts_the_connection(client, clinic, settings, caplog):
    media_id = await _photo(client, clinic, _big_jpeg())
    blob = max((p for p in (settings.data_dir / "blobs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    tampered = bytearray(blob.read_bytes())
    tampered[-100] ^= 0x01  # in the last segment: the first goes out intact
    blob.write_bytes(bytes(tampered))
    with caplog.at_level(logging.INFO):
        response = await raw(client, (f"GET /v1/media/{media_id}/content HTTP/1.1\r\nHost: vault\r\n"
                                      f"Authorization: Bearer {clinic.tokens['records']}\r\n\r\n").encode())
    status, headers, body = split(response)
    assert status == 200
    assert len(body) < int(headers["content-length"])  # cut short, so the client knows
    assert response.count(b"HTTP/1.1 ") == 1  # no second response inside the body
    assert any(r.getMessage() == "response failed after it started" for r in caplog.records)
    await still_answers(client)


async def test_a_nul_anywhere_in_a_query_or_body_is_a_422(client, clinic):
    """PostgreSQL text cannot hold a NUL: in a filter, a stored string or a path's id it was
    a 500 there. One check at the edge refuses it in any string of a query or a JSON body."""
    patient = await new_patient(client, clinic)
    refused = [
        await client.get("/v1/audit", params={"action": "media.\u0000"}, headers=clinic.auth("auditor")),
        await client.post("/v1/patients", json={"external_ref": "MRN-\u0000", "notes": "a"}, headers=clinic.auth("practitioner")),
        await client.patch(f"/v1/patients/{patient}", json={"notes": "b\u0000"}, headers=clinic.auth("practitioner")),
        await client.post(f"/v1/patients/{patient}/treatments", headers=clinic.auth("practitioner"),
                          json={"name": "Peel", "performed_on": "2025-06-01", "area": "\u0000"}),
        await client.put("/v1/treatment-types", json={"names": ["Peel\u0000"]}, headers=clinic.auth("dpo")),
    ]
    for resp in refused:
        assert resp.status == 422, (resp.url, await resp.text())
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["status"] == 422 and "\u0000" not in json.dumps(body)
    # A path with one names nothing; the refusal is not audited (the entry would carry it).
    for path, role in (("/v1/media/%00", "practitioner"), (f"/v1/patients/{patient}%00", "practitioner"),
                       ("/v1/media/%00", "auditor"), ("/v1/releasable/%00/thumbnail", None)):
        resp = await client.get(path, headers=clinic.auth(role) if role else {})
        assert resp.status == 404, (path, await resp.text())
        assert resp.content_type == "application/problem+json"
