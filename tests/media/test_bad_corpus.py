"""A bad-input corpus made here (issue 11, item 9): truncations, bit flips and wrong
boxes/chunks of every supported photo format and of a video, each uploaded through HTTP.
Each gets a JSON 4xx and leaves nothing behind, or is a clean accept; never a 500."""

from __future__ import annotations

import io
import random

import pytest

from tests.http.test_bad_input import counts, new_patient, still_answers
from tests.pipeline import samples
from tests.pipeline.videos import make_video

SEEDS = {
    "image/jpeg": lambda: samples.jpeg_with_everything(orientation=6),
    "image/png": lambda: samples.png_with_everything(orientation=6),
    "image/webp": lambda: samples.webp_with_everything(orientation=6),
    "image/heic": lambda: samples.heic_with_everything(orientation=6),
    "video/mp4": lambda: make_video(seconds=1, fmt="mp4", audio=False, subtitle=False, timecode=False),
}
WRONG = {b"moov": b"free", b"mdat": b"skip", b"stsd": b"stts", b"meta": b"free", b"iloc": b"iinf",
         b"IHDR": b"tEXt", b"IDAT": b"IEND", b"VP8 ": b"VP8L", b"VP8X": b"ALPH"}


def corpus(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    items = [(f"truncated-{n}", data[:n]) for n in (12, 300, len(data) // 2, len(data) - 7)]
    for i in range(4):
        flipped = bytearray(data)
        for _ in range(1 + i * 3):
            at = rng.randrange(len(flipped))
            flipped[at] ^= 1 << rng.randrange(8)
        items.append((f"flipped-{i}", bytes(flipped)))
    for old, new in WRONG.items():
        if old in data:
            items.append((f"{old.decode().strip()}-as-{new.decode().strip()}", data.replace(old, new, 1)))
    return items


@pytest.mark.parametrize("mime", list(SEEDS))
async def test_bad_corpus_is_4xx_or_clean_accept(client, clinic, settings, mime):
    rng = random.Random(11)
    pid = await new_patient(client, clinic)
    for name, body in corpus(SEEDS[mime](), rng):
        before = await counts(client, settings)
        resp = await client.post(f"/v1/patients/{pid}/media", data=io.BytesIO(body),
                                 headers={**clinic.auth("practitioner"), "Content-Type": mime})
        assert resp.status == 201 or 400 <= resp.status < 500, f"{mime} {name}: {resp.status} {await resp.text()}"
        assert resp.content_type == ("application/json" if resp.status == 201 else "application/problem+json")
        if resp.status != 201:
            assert "error" in await resp.json()
            assert await counts(client, settings) == before, f"{mime} {name} left something behind"
    await still_answers(client)
