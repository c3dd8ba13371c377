"""The decoder worker pool with real worker processes: one broken item fails alone (422),
a full pool answers 503, workers are recycled, the sandbox holds, and the server refuses
a lying worker's results."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import struct
import sys
import zlib

import pytest
from PIL import Image

from tests.pipeline.samples import jpeg_with_everything, picture
from vault.errors import DecoderBusy, DecoderFailed, MediaRejected
from vault.media import recheck
from vault.media.decoders import BACKGROUND_NICE, DecoderPool, PoolLimits
from vault.media.processing import PhotoPipeline

MAX_PIXELS = 100_000_000
# Address space of a worker in the bound test: room for the interpreter, its libraries and
# small photos, not for a 300 MB decode and its copies.
MEMORY_BOUND = 700 << 20


def limits(**overrides) -> PoolLimits:
    base = dict(workers=2, item_seconds=60, video_seconds=60, memory_bytes=4 << 30, recycle_after=100,
                queue_seconds=60, max_queue=64)
    return PoolLimits(**{**base, **overrides})


async def open_pipeline(**overrides) -> PhotoPipeline:
    pipeline = PhotoPipeline(DecoderPool(limits(**overrides), face_model=None), max_pixels=MAX_PIXELS)
    pipeline.start()
    return pipeline


def photo() -> bytes:
    out = io.BytesIO()
    picture(320, 240).save(out, "JPEG", quality=85)
    return out.getvalue()


def bomb_png(side: int = 10_000) -> bytes:
    """A tiny file that decodes to ``side``² RGB pixels (300 MB at 10,000)."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side * 3) for _ in range(side)), 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def busy_pids(pipeline: PhotoPipeline) -> set[int]:
    idle = {w.proc.pid for w in pipeline.pool._idle._queue}  # noqa: SLF001 - which worker is busy
    return {w.proc.pid for w in pipeline.pool._all} - idle  # noqa: SLF001


async def test_a_killed_worker_fails_only_its_item(tmp_path):
    pipeline = await open_pipeline(workers=3)
    try:
        await asyncio.gather(*(pipeline.process(photo()) for _ in range(3)))  # all three up

        async def busy_until(count: int) -> set[int]:
            # On a loaded machine a worker is back in the idle queue, or has taken an item,
            # a while after the server got its answer: poll instead of a fixed sleep.
            for _ in range(3000):
                if len(pids := busy_pids(pipeline)) == count:
                    return pids
                await asyncio.sleep(0.01)
            raise AssertionError(f"busy workers: {busy_pids(pipeline)}, expected {count}")

        await busy_until(0)  # every worker idle again: the one busy next is the victim's
        victim = asyncio.create_task(pipeline.process(bomb_png(8000)))
        pids = await busy_until(1)
        others = [asyncio.create_task(pipeline.process(photo())) for _ in range(6)]
        os.kill(pids.pop(), signal.SIGKILL)
        with pytest.raises(DecoderFailed) as failed:
            await asyncio.wait_for(victim, 120)
        assert failed.value.status == 422
        done = await asyncio.wait_for(asyncio.gather(*others), 120)
        assert all(p.mime == "image/jpeg" for p in done)
        assert (await pipeline.process(photo())).width == 320  # the pool replaced the worker
    finally:
        await pipeline.close()


async def test_an_item_past_its_wall_time_is_killed_alone():
    pipeline = await open_pipeline(workers=2)
    never = asyncio.Event()

    async def stalled_read(start: int, end: int) -> bytes:
        await never.wait()  # the worker waits for bytes that never come: only the clock ends it
        return b""

    try:
        await asyncio.gather(pipeline.process(photo()), pipeline.process(photo()))
        stuck = asyncio.create_task(pipeline.pool.run("probe", {"size": 1 << 20, "max_pixels": MAX_PIXELS},
                                                      read=stalled_read, max_result=1 << 20, seconds=1.0))
        fine = [asyncio.create_task(pipeline.process(photo())) for _ in range(4)]
        with pytest.raises(DecoderFailed) as failed:
            await asyncio.wait_for(stuck, 120)
        assert failed.value.status == 422
        assert len(await asyncio.wait_for(asyncio.gather(*fine), 120)) == 4
        assert (await pipeline.process(photo())).width == 320  # the killed worker was replaced
    finally:
        await pipeline.close()


async def test_an_item_past_its_address_space_fails_alone():
    pipeline = await open_pipeline(workers=2, memory_bytes=MEMORY_BOUND)
    try:
        await asyncio.gather(pipeline.process(photo()), pipeline.process(photo()))
        bomb = asyncio.create_task(pipeline.process(bomb_png(10_000)))  # 300 MB of pixels, and copies to scale
        fine = [asyncio.create_task(pipeline.process(photo())) for _ in range(4)]
        with pytest.raises(DecoderFailed) as failed:
            await asyncio.wait_for(bomb, 120)
        assert failed.value.status == 422
        assert len(await asyncio.wait_for(asyncio.gather(*fine), 120)) == 4
    finally:
        await pipeline.close()


async def test_the_stripped_original_comes_back_before_the_decode():
    """The worker sends the stripped original (re-checked here) before it decodes a pixel,
    so the server can store it meanwhile; an item that then fails still fails (422)."""
    pipeline = await open_pipeline(workers=1, memory_bytes=MEMORY_BOUND)
    try:
        seen: list[recheck.StrippedOriginal] = []
        data = jpeg_with_everything(orientation=6)
        result = await pipeline.process(data, on_original=seen.append)
        assert [s.data for s in seen] == [result.stripped] and seen[0].mime == "image/jpeg"
        assert seen[0].data != data  # stripped: the upload's Exif, XMP and the rest are gone
        seen.clear()
        with pytest.raises(DecoderFailed):  # past the worker's address space, after stripping
            await asyncio.wait_for(pipeline.process(bomb_png(10_000), on_original=seen.append), 120)
        assert len(seen) == 1 and seen[0].mime == "image/png" and seen[0].pixels == 10_000 * 10_000
    finally:
        await pipeline.close()


async def test_a_refused_progress_frame_fails_the_item_and_replaces_the_worker():
    pipeline = await open_pipeline(workers=1)
    try:
        await pipeline.process(photo())
        (before,) = pipeline.pool._all  # noqa: SLF001

        def refuse(frame, parts):
            raise DecoderFailed(details={"check": "stripped.frames"})

        with pytest.raises(DecoderFailed):
            await pipeline.pool.run("photo", {"max_pixels": MAX_PIXELS}, photo(), progress=refuse)
        assert (await pipeline.process(photo())).width == 320
        assert before not in pipeline.pool._all  # noqa: SLF001
    finally:
        await pipeline.close()


async def test_a_full_pool_answers_503_and_recycles_workers():
    pipeline = await open_pipeline(workers=1, max_queue=1, queue_seconds=60, recycle_after=2)
    try:
        await pipeline.process(photo())
        first = {w.proc.pid for w in pipeline.pool._all}  # noqa: SLF001
        await pipeline.process(photo())  # second item: this worker is now retired
        await pipeline.process(photo())
        assert first.isdisjoint(w.proc.pid for w in pipeline.pool._all)  # noqa: SLF001
        running = asyncio.create_task(pipeline.process(bomb_png(6000)))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(pipeline.process(photo()))
        await asyncio.sleep(0.2)
        with pytest.raises(DecoderBusy) as busy:
            await pipeline.process(photo())
        assert busy.value.status == 503 and busy.value.retry_after
        await asyncio.wait_for(asyncio.gather(running, waiting, return_exceptions=True), 120)
    finally:
        await pipeline.close()


async def test_queue_wait_is_bounded():
    pipeline = await open_pipeline(workers=1, queue_seconds=0.5)
    holding, release = asyncio.Event(), asyncio.Event()

    async def blocked_read(start: int, end: int) -> bytes:
        holding.set()  # the only worker is now busy with this item, whatever the machine's speed
        await release.wait()
        return b""

    try:
        # the worker must be up first: with a 0.5 s queue bound, a slow start is itself "busy"
        async with asyncio.timeout(120):
            while pipeline.pool._idle.qsize() < 1:  # noqa: SLF001
                await asyncio.sleep(0.05)
        running = asyncio.create_task(pipeline.pool.run("probe", {"size": 1 << 20, "max_pixels": MAX_PIXELS},
                                                        read=blocked_read, max_result=1 << 20))
        await asyncio.wait_for(holding.wait(), 120)
        with pytest.raises(DecoderBusy):
            await pipeline.process(photo())
        release.set()
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 120)
    finally:
        await pipeline.close()


async def test_background_items_have_their_own_lower_priority_workers():
    """The face search's workers are apart and niced: a search holding every one of them
    never makes an upload wait, and another search waits for them (bounded), not for an
    upload worker."""
    pipeline = await open_pipeline(workers=1, background_workers=1, queue_seconds=0.5)
    holding, release = asyncio.Event(), asyncio.Event()

    async def blocked_read(start: int, end: int) -> bytes:
        holding.set()
        await release.wait()
        return b""

    try:
        async with asyncio.timeout(120):
            while pipeline.pool._idle.qsize() < 1 or pipeline.pool._idle_background.qsize() < 1:  # noqa: SLF001
                await asyncio.sleep(0.05)
        lanes = {w.background: os.getpriority(os.PRIO_PROCESS, w.proc.pid) - os.getpriority(os.PRIO_PROCESS, 0)
                 for w in pipeline.pool._all}  # noqa: SLF001
        assert lanes == {False: 0, True: BACKGROUND_NICE}
        running = asyncio.create_task(pipeline.pool.run("probe", {"size": 1 << 20, "max_pixels": MAX_PIXELS},
                                                        read=blocked_read, max_result=1 << 20, background=True))
        await asyncio.wait_for(holding.wait(), 120)
        assert (await pipeline.process(photo())).width == 320  # the upload worker is free
        with pytest.raises(DecoderBusy):  # the background lane is full; it does not borrow
            await pipeline.pool.run("probe", {"size": 1 << 20, "max_pixels": MAX_PIXELS}, read=blocked_read,
                                    max_result=1 << 20, background=True)
        release.set()
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), 120)
    finally:
        await pipeline.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux's (Landlock, capabilities)")
async def test_inside_a_worker_memory_keys_and_database_are_out_of_reach(tmp_path):
    keystore = tmp_path / "keys.sqlite3"
    keystore.write_bytes(b"SQLite format 3\x00 pretend key store")
    keystore.chmod(0o600)
    pipeline = await open_pipeline(workers=1)
    try:
        result, _ = await pipeline.pool.run(
            "sandbox_check", {"paths": [str(keystore), str(tmp_path)], "connect": [["127.0.0.1", 5432]]}
        )
        assert result[f"open:/proc/{os.getpid()}/mem"] in ("EACCES", "EPERM")
        assert result[f"open:{keystore}"] in ("EACCES", "EPERM")
        assert result[f"open:{tmp_path}"] in ("EACCES", "EPERM")
        # Refused by the sandbox (EACCES), not merely nobody listening (ECONNREFUSED).
        assert result["connect:127.0.0.1:5432"] in ("EACCES", "EPERM")
        (worker,) = pipeline.pool._all  # noqa: SLF001
        assert worker.sandbox["capabilities_dropped"] and not worker.sandbox["dumpable"]
        assert worker.sandbox["landlock_abi"] >= 4
        assert worker.sandbox["dies_with_parent"]
        with open(f"/proc/{worker.proc.pid}/environ", "rb") as f:
            environ = f.read()
        assert b"VAULT_" not in environ
    finally:
        await pipeline.close()


# -- the server's re-check of worker results ----------------------------------------------------
def honest_result() -> tuple[dict, list[bytes], bytes, bytes]:
    """What a worker answers for a JPEG (the wire form), the upload, and its stripped copy."""
    from vault.pipeline.faces import NoDetector
    from vault.pipeline.photo import process_photo
    from vault.pipeline.results import layout_wire

    data = jpeg_with_everything(orientation=6)
    p = process_photo(data, max_pixels=MAX_PIXELS, detector=NoDetector())
    sizes = sorted(p.thumbnails)
    layout, new = layout_wire(p)
    result = {"mime": p.mime, "width": p.width, "height": p.height, "orientation": p.orientation,
              "capture": p.capture, "faces": {"detected": True, "count": 1, "boxes": [[10, 10, 50, 50]],
                                              "detector": "yunet-onnx", "assumed": False}, "thumbnails": sizes,
              "layout": layout}
    return result, [new, *(p.thumbnails[s] for s in sizes)], data, p.stripped


def test_recheck_accepts_an_honest_result():
    result, parts, data, stripped = honest_result()
    # Ranges of the upload and a few new bytes (the rewritten JFIF and orientation headers, EOI).
    assert any(entry[0] == "in" for entry in result["layout"]) and len(parts[0]) < 200
    checked = recheck.check_photo(result, parts, upload=data, max_pixels=MAX_PIXELS)
    assert checked.stripped == stripped
    assert checked.faces.boxes == [[10, 10, 50, 50]]


def test_recheck_accepts_a_whole_stripped_file():
    """A format without a layout (or a JPEG of too many pieces) comes back whole."""
    result, parts, data, stripped = honest_result()
    result["layout"], parts[0] = [["new", len(stripped)]], stripped
    assert recheck.check_photo(result, parts, upload=data, max_pixels=MAX_PIXELS).stripped == stripped


def _as_bytes(result: dict, parts: list[bytes], stripped: bytes) -> None:
    result["layout"], parts[0] = [["new", len(stripped)]], stripped


@pytest.mark.parametrize("lie", ["box_outside", "count", "app1", "trailer", "thumb_exif", "size", "assumed",
                                 "layout_whole_upload", "layout_exif_range", "layout_past_end", "layout_unused",
                                 "layout_overrun", "layout_kind", "layout_missing", "layout_too_long"])
def test_recheck_refuses_a_lying_worker(lie):
    result, parts, data, stripped = honest_result()
    if lie == "box_outside":
        result["faces"]["boxes"] = [[result["width"] - 5, 0, 50, 50]]
    elif lie == "count":
        result["faces"]["count"] = 3
    elif lie == "app1":  # an Exif APP1 with a GPS-like payload slipped in after SOI
        body = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00" * 64
        _as_bytes(result, parts, stripped[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + stripped[2:])
    elif lie == "trailer":
        _as_bytes(result, parts, stripped + b"PK\x03\x04 hidden archive")
    elif lie == "layout_whole_upload":  # "the stripped file is the upload": Exif, XMP, GPS and all
        result["layout"], parts[0] = [["in", 0, len(data)]], b""
    elif lie == "layout_exif_range":  # the upload's own APP1 Exif segment spliced in after SOI
        exif_at = data.index(b"\xff\xe1")
        exif_end = exif_at + 2 + struct.unpack(">H", data[exif_at + 2:exif_at + 4])[0]
        head, *rest = result["layout"]  # SOI and the rewritten headers, then the kept ranges
        result["layout"] = [head, ["in", exif_at, exif_end], *rest]
    elif lie == "layout_past_end":
        result["layout"].append(["in", len(data) - 10, len(data) + 10])
    elif lie == "layout_unused":  # new bytes that no entry places
        parts[0] = parts[0] + b"hidden"
    elif lie == "layout_overrun":  # more new bytes asked for than were sent
        result["layout"].append(["new", 10])
    elif lie == "layout_kind":
        result["layout"][0] = ["file", "/etc/passwd"]
    elif lie == "layout_missing":
        del result["layout"]
    elif lie == "layout_too_long":  # the upload repeated past the growth bound
        result["layout"] = result["layout"] + [["in", 0, len(data)]] * 2
    elif lie == "thumb_exif":
        out = io.BytesIO()
        Image.open(io.BytesIO(parts[1])).save(out, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x00")
        parts[1] = out.getvalue()
    elif lie == "size":
        result["width"] += 1
    elif lie == "assumed":
        result["faces"]["assumed"] = True
    with pytest.raises(DecoderFailed) as refused:
        recheck.check_photo(result, parts, upload=data, max_pixels=MAX_PIXELS)
    assert refused.value.status == 422


# -- redaction for de-identified release ---------------------------------------------------------
def redact_lie(lie: str, good: bytes) -> bytes:
    if lie == "app1":  # a full Exif block (GPS-like payload) after SOI
        body = b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00" * 64
        return good[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + good[2:]
    if lie == "comment":
        body = b"patient MRN-1001"
        return good[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + good[2:]
    if lie == "trailer":
        return good + b"PK\x03\x04 hidden archive"
    if lie == "unredacted_original":  # the right size, but another format with all its metadata
        return jpeg_with_everything(orientation=6)
    if lie == "png":
        out = io.BytesIO()
        Image.open(io.BytesIO(good)).save(out, "PNG")
        return out.getvalue()
    raise AssertionError(lie)


async def test_redaction_runs_in_a_worker_and_comes_back_bare_and_upright():
    pipeline = await open_pipeline(workers=1)
    try:
        original = jpeg_with_everything(orientation=6)  # stored sideways, displayed upright
        with Image.open(io.BytesIO(original)) as img:
            stored = img.size
        width, height = stored[1], stored[0]
        redacted, _ = await pipeline.render_redaction(original, [[4, 4, 20, 20]], width=width, height=height)
        with Image.open(io.BytesIO(redacted)) as img:
            assert img.format == "JPEG" and img.size == (width, height)
            assert not img.getexif() and "exif" not in img.info and "comment" not in img.info
            assert img.convert("L").getpixel((10, 10)) <= 12  # the box is filled
        # The wrong expected frame is refused: the server checks the size it asked for.
        with pytest.raises(DecoderFailed) as refused:
            await pipeline.render_redaction(original, [], width=stored[0], height=stored[1])
        assert refused.value.status == 422 and refused.value.details == {"check": "redacted.dimensions"}
        # A file the decoder refuses fails as that item, and the worker goes on.
        with pytest.raises(MediaRejected) as rejected:
            await pipeline.render_redaction(b"\xff\xd8\xff\xdb garbage", [], width=8, height=8)
        assert rejected.value.status == 422
        assert await pipeline.render_redaction(photo(), [], width=320, height=240)
    finally:
        await pipeline.close()


async def test_redaction_is_bounded_by_the_items_wall_time():
    pipeline = await open_pipeline(workers=1)
    try:
        assert await pipeline.render_redaction(photo(), [], width=320, height=240)  # the worker is up
        bounds = pipeline.pool.limits
        # A bound no 64-megapixel decode and re-encode can meet: the worker is killed at it.
        pipeline.pool.limits = dataclasses.replace(bounds, item_seconds=0.001)
        first = {w.proc.pid for w in pipeline.pool._all}  # noqa: SLF001
        with pytest.raises(DecoderFailed) as failed:
            await asyncio.wait_for(pipeline.render_redaction(bomb_png(8000), [[0, 0, 10, 10]], width=8000,
                                                              height=8000), 120)
        assert failed.value.status == 422
        pipeline.pool.limits = bounds
        assert await asyncio.wait_for(pipeline.render_redaction(photo(), [], width=320, height=240), 120)
        assert first.isdisjoint(w.proc.pid for w in pipeline.pool._all)  # noqa: SLF001 - replaced
    finally:
        await pipeline.close()


def test_recheck_accepts_an_honest_redaction():
    from vault.pipeline.redact import render_redaction

    good, _ = render_redaction(photo(), [[10, 10, 40, 40]])
    assert recheck.check_redacted([good], width=320, height=240) == good


@pytest.mark.parametrize("lie", ["app1", "comment", "trailer", "unredacted_original", "png", "size", "two_parts"])
def test_recheck_refuses_a_lying_redaction(lie):
    from vault.pipeline.redact import render_redaction

    good, _ = render_redaction(photo(), [[10, 10, 40, 40]])
    parts, width, height = [good], 320, 240
    if lie == "size":
        width = 321
    elif lie == "two_parts":
        parts = [good, good]
    else:
        parts = [redact_lie(lie, good)]
        if lie == "unredacted_original":
            with Image.open(io.BytesIO(parts[0])) as img:
                width, height = img.size
    with pytest.raises(DecoderFailed) as refused:
        recheck.check_redacted(parts, width=width, height=height)
    assert refused.value.status == 422
