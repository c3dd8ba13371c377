"""Limits and timeouts (issue 11, item 6), against the real server and raw sockets:
header-read timeout, body timeout, 413 from Content-Length before the body is read,
concurrent-upload caps and the photo memory budget. Timing is only ever asserted as a
generous hang bound."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.http.test_bad_input import HANG, counts, new_patient, split, still_answers
from tests.pipeline.samples import jpeg_with_everything
from vault.appkeys import UPLOAD_LIMITS
from vault.http.limits import WORKING_COPIES

MiB = 1 << 20
BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 1.0


@pytest.fixture
def settings(settings, request):
    limits = dict(http_header_timeout=HEADER_TIMEOUT, http_body_timeout=BODY_TIMEOUT, max_photo_bytes=MiB)
    return settings.replace(**{**limits, **getattr(request, "param", {})})


def jpeg_prefix(n: int) -> bytes:
    """The first ``n`` bytes of a real JPEG: enough for the sniffer, never the whole."""
    noise = np.random.default_rng(5).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "JPEG", quality=95)
    assert len(out.getvalue()) > n
    return out.getvalue()[:n]


def upload_head(clinic, pid: str, *, length: int, content_type: str = "image/jpeg", role: str = "practitioner") -> bytes:
    return (f"POST /v1/patients/{pid}/media HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {clinic.tokens[role]}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


async def connect(client):
    return await asyncio.open_connection(client.server.host, client.server.port)


async def closed_within(reader, seconds: float) -> bytes:
    """Everything the server sends until it closes; fails if it does not close in time."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_request_head_must_arrive_within_the_header_timeout(client):
    idle_reader, idle_writer = await connect(client)  # sends nothing at all
    slow_reader, slow_writer = await connect(client)
    slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: va")
    started = time.monotonic()
    for _ in range(3):  # a byte now and then does not keep a head alive
        await asyncio.sleep(HEADER_TIMEOUT / 3)
        slow_writer.write(b"u")
    assert await closed_within(slow_reader, HANG) == b""  # closed, no answer to a client that sends no request
    assert await closed_within(idle_reader, HANG) == b""
    assert time.monotonic() - started < HANG
    for writer in (idle_writer, slow_writer):
        writer.close()


async def test_kept_alive_connection_outlives_the_header_timeout(client):
    # Client pools open connections ahead and keep them idle: only a started head is timed.
    reader, writer = await connect(client)
    for _ in range(2):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
        status, _, _ = split(await reader.readuntil(b'"ok"}'))
        assert status == 200
        await asyncio.sleep(HEADER_TIMEOUT * 2.5)
    writer.close()


async def test_a_partial_head_on_a_kept_alive_connection_is_timed(client):
    """The timer of a later request starts with its first bytes when they hold no whole head."""
    reader, writer = await connect(client)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: vault\r\n\r\n")
    status, _, _ = split(await reader.readuntil(b'"ok"}'))
    assert status == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")
    started = time.monotonic()
    assert await closed_within(reader, HANG) == b""
    assert time.monotonic() - started < HANG
    writer.close()


@pytest.mark.parametrize("settings", [dict(max_uploads=400, max_uploads_per_token=400)], indirect=True)
async def test_200_slow_clients_are_cut_off_while_others_are_served(client, clinic, settings):
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    jpeg = jpeg_with_everything()

    async def trickle(i: int) -> tuple[float, bytes]:
        reader, writer = await connect(client)
        if i % 2:  # half are photo uploads, half JSON bodies
            writer.write(upload_head(clinic, pid, length=len(jpeg)))
            body = jpeg
        else:
            body = b'{"external_ref": "' + b"x" * 200 + b'"}'
            writer.write((f"POST /v1/patients HTTP/1.1\r\nHost: vault\r\nAuthorization: Bearer {clinic.tokens['practitioner']}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        started, received = time.monotonic(), b""
        try:
            for byte in body:  # one byte a second
                writer.write(bytes([byte]))
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    continue
                received += chunk
                if not chunk:
                    break
                received += await closed_within(reader, HANG)
                break
        except ConnectionError:
            pass
        finally:
            writer.close()
        return time.monotonic() - started, received

    slow = [asyncio.create_task(trickle(i)) for i in range(200)]
    served = 0
    while not all(task.done() for task in slow):
        resp = await client.get("/v1/patients", params={"limit": "1"}, headers=clinic.auth("dpo"))
        assert resp.status == 200
        served += 1
        await asyncio.sleep(0.05)
    results = [task.result() for task in slow]
    assert served > 0
    for elapsed, received in results:
        assert elapsed < HANG  # cut off, not waited on
        if received:
            status, _, _ = split(received)
            assert status == 408
    assert sum(1 for _, received in results if received.startswith(b"HTTP/1.1 408")) >= 150
    assert client.server.app[UPLOAD_LIMITS].active == 0  # no slot held by a slow client
    assert await counts(client, settings) == before


async def test_413_from_content_length_before_the_body(client, clinic, settings):
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    # A declared photo type, an undeclared type (judged once the head is sniffed), and a
    # multipart part: none of the 2 MiB is ever sent, yet the answer comes.
    cases = [
        (upload_head(clinic, pid, length=2 * MiB), b""),
        (upload_head(clinic, pid, length=2 * MiB, content_type="application/octet-stream"), jpeg_prefix(70_000)),
    ]
    part = b'--B\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    cases.append((upload_head(clinic, pid, length=2 * MiB, content_type="multipart/form-data; boundary=B"), part + jpeg_prefix(70_000)))
    for head, first in cases:
        reader, writer = await connect(client)
        writer.write(head + first)
        status, headers, body = split(await asyncio.wait_for(reader.readuntil(b"}}"), HANG))
        assert status == 413 and b'"too_large"' in body
        writer.close()
    assert await counts(client, settings) == before
    await still_answers(client)


async def _stall(client, clinic, pid, *, length: int, prefix: bytes, role: str = "practitioner"):
    reader, writer = await connect(client)
    writer.write(upload_head(clinic, pid, length=length, role=role) + prefix)
    await writer.drain()
    return reader, writer


async def _until(predicate) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server never reached the expected state")


@pytest.mark.parametrize("settings", [dict(max_uploads=3, max_uploads_per_token=2, http_body_timeout=30.0)], indirect=True)
async def test_concurrent_upload_caps_answer_429_and_503_with_retry_after(client, clinic, make_clinic, settings):
    other = await make_clinic()
    pid, other_pid = await new_patient(client, clinic), await new_patient(client, other)
    limits = client.server.app[UPLOAD_LIMITS]
    stalled = [await _stall(client, clinic, pid, length=MiB // 2, prefix=b"\xff\xd8\xff") for _ in range(2)]
    await _until(lambda: limits.active == 2)
    resp = await client.post(f"/v1/patients/{pid}/media", data=io.BytesIO(jpeg_with_everything()),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 429 and (await resp.json())["error"] == "too_many_uploads"
    assert int(resp.headers["Retry-After"]) > 0
    stalled.append(await _stall(client, other, other_pid, length=MiB // 2, prefix=b"\xff\xd8\xff"))
    await _until(lambda: limits.active == 3)
    resp = await client.post(f"/v1/patients/{other_pid}/media", data=io.BytesIO(jpeg_with_everything()),
                             headers={**other.auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 503 and (await resp.json())["error"] == "busy"
    assert int(resp.headers["Retry-After"]) > 0
    for _, writer in stalled:  # clients that go away give their slots back
        writer.close()
    await _until(lambda: limits.active == 0)
    resp = await client.post(f"/v1/patients/{pid}/media", data=io.BytesIO(jpeg_with_everything()),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 201


@pytest.mark.parametrize("settings", [dict(upload_memory_bytes=int(2.5 * WORKING_COPIES * MiB), http_body_timeout=30.0)],
                         indirect=True)
async def test_photo_memory_budget_is_shared_by_all_uploads(client, clinic, make_clinic, settings):
    clinics = [clinic, await make_clinic(), await make_clinic()]  # apart, so no token reaches its own cap
    pids = [await new_patient(client, c) for c in clinics]
    before = await counts(client, settings)
    budget = client.server.app[UPLOAD_LIMITS].memory
    prefix = jpeg_prefix(70_000)
    stalled = [await _stall(client, c, p, length=MiB, prefix=prefix) for c, p in zip(clinics[:2], pids[:2])]
    # each declared 1 MiB photo holds its working copies: body, decoder results, ciphertext
    await _until(lambda: budget.used == 2 * WORKING_COPIES * MiB)
    reader, writer = await _stall(client, clinics[2], pids[2], length=MiB, prefix=prefix)
    status, headers, body = split(await asyncio.wait_for(reader.readuntil(b"}}"), HANG))
    assert status == 503 and b'"busy"' in body and int(headers["retry-after"]) > 0
    writer.close()
    for _, w in stalled:
        w.close()
    await _until(lambda: budget.used == 0)
    assert await counts(client, settings) == before
    resp = await client.post(f"/v1/patients/{pids[2]}/media", data=io.BytesIO(jpeg_with_everything()),
                             headers={**clinics[2].auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 201


async def test_a_stalled_upload_gets_408_and_its_connection_closed(client, clinic, settings):
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    reader, writer = await _stall(client, clinic, pid, length=MiB // 2, prefix=jpeg_prefix(8192))
    status, headers, body = split(await closed_within(reader, HANG))
    assert status == 408 and b'"request_timeout"' in body and headers.get("connection") == "close"
    writer.close()
    assert await counts(client, settings) == before
    assert client.server.app[UPLOAD_LIMITS].active == 0
