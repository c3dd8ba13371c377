"""Consent gate and release paths, against baselines measured in the same run.

    .venv/bin/python bench/bench_consent.py [--media 60] [--rounds 15]

- gate: one ``decide`` over a patient with 20 consent events, vs one HMAC-SHA256 (the
  signature of the thumbnail URL that accompanies every allowed listing item);
- redaction: ``render_redaction`` of a 12 MP JPEG (two rectangles) vs decoding and re-encoding the
  same JPEG at the same quality with Pillow; and of a 256 px thumbnail (the signed
  thumbnail of a de-identified item) vs re-encoding that thumbnail;
- HTTP (in-process app, SQLite, fresh temp folder): ``GET /v1/releasable`` listing N media
  (gate + signed URL per item) vs ``GET /v1/patients/{id}/media`` listing the same N; a
  release plus its one-time download of a 2 MP photo, original vs de-identified, vs
  ``GET /v1/media/{id}/content`` of the same photo.
Medians of the rounds; ratios > 1 mean slower than the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image  # noqa: E402

from _seed import amedian, jpeg, seeded  # noqa: E402
from bench_pipeline import sample_jpeg  # noqa: E402
from vault.consent import gate  # noqa: E402
from vault.media.faces import SEARCH_JOB  # noqa: E402
from vault.pipeline.redact import render_redaction  # noqa: E402


def median_seconds(action: Callable[[], object], runs: int) -> float:
    action()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def row(name: str, value: float, baseline: float, unit: str = "ms") -> None:
    scale = 1e6 if unit == "µs" else 1e3
    print(f"| {name} | {value * scale:.2f} {unit} | {baseline * scale:.2f} {unit} | {value / baseline:.2f} |")


def bench_gate(rounds: int) -> None:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    media = gate.MediaFacts(media_id="m" * 32, patient_id="p" * 32, treatment_id="t" * 32, kind="photo", status="ready",
                            faces_detected=True, face_boxes=((10, 10, 50, 50),))
    events = []
    for i in range(20):
        scope = [dict(scope=gate.SCOPE_PATIENT), dict(scope=gate.SCOPE_TREATMENT, treatment_id="t" * 32),
                 dict(scope=gate.SCOPE_MEDIA, media_ids=frozenset({"m" * 32, "n" * 32}))][i % 3]
        events.append(gate.ConsentEvent(id=f"{i:032x}", patient_id="p" * 32, kind=gate.GRANT if i % 4 else gate.WITHDRAWAL,
                                        purposes=frozenset(gate.PURPOSES[: 1 + i % 4]), recorded_at=now - timedelta(days=40 - i),
                                        identifiable=bool(i % 2), **scope))
    key, payload = b"k" * 32, b"v1|release-thumbnail:education|" + b"m" * 32 + b":deidentified|" + b"t" * 32 + b"|1790000000"
    n = 2000
    decide = median_seconds(lambda: [gate.decide(media, "education", now, events, "active") for _ in range(n)], rounds) / n
    mac = median_seconds(lambda: [hmac.new(key, payload, hashlib.sha256).hexdigest() for _ in range(n)], rounds) / n
    row("gate decide, 20 events", decide, mac, "µs")


def bench_redaction(rounds: int) -> None:
    big = sample_jpeg()
    boxes = [[960, 520, 840, 980], [2400, 660, 700, 840]]  # the former boxes grown by 40% a side

    def reencode(data: bytes) -> bytes:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, "JPEG", quality=90)
            return out.getvalue()

    row("redact 12 MP JPEG (2 boxes)", median_seconds(lambda: render_redaction(big, boxes), rounds),
        median_seconds(lambda: reencode(big), rounds))
    thumb = io.BytesIO()
    with Image.open(io.BytesIO(big)) as image:
        image.thumbnail((256, 256))
        image.save(thumb, "JPEG", quality=85)
    small = thumb.getvalue()
    row("redact 256 px thumbnail", median_seconds(lambda: render_redaction(small, [[54, 27, 72, 81]]), rounds * 20),
        median_seconds(lambda: reencode(small), rounds * 20))


async def bench_http(n_media: int, rounds: int) -> None:
    async with seeded(("practitioner", "dpo", "marketing", "records"), patient_by="dpo") as s:
        client, auth, pid = s.client, s.auth, s.patient_id
        small = jpeg()
        for _ in range(n_media):
            await s.upload(small)
        big_id = await s.upload(sample_jpeg(1600, 1200))
        await s.drain(SEARCH_JOB)  # the full-resolution face search: until it has run, nothing is released
        await s.consent({"purposes": ["education"], "identifiable": True})
        await s.consent({"purposes": ["social_media"], "identifiable": False, "media_ids": [big_id]})
        # Policy "review" (the default): a person approves the redaction, rendered once.
        seen = await (await client.get(f"/v1/media/{big_id}/redaction", headers=auth["dpo"])).json()
        resp = await client.post(f"/v1/media/{big_id}/redaction/approve", json={"digest": seen["digest"]}, headers=auth["dpo"])
        assert resp.status == 201, await resp.text()
        listed = await (await client.get("/v1/releasable", params={"purpose": "social_media"}, headers=auth["marketing"])).json()
        handle = listed["items"][0]["handle"]

        async def get(path: str, headers, params=None) -> bytes:
            async with client.get(path, headers=headers, params=params) as r:
                assert r.status == 200, await r.text()
                return await r.read()

        limit = str(n_media + 1)
        listing = await amedian(lambda: get("/v1/releasable", auth["marketing"], {"purpose": "education", "limit": limit}), rounds)
        media = await amedian(lambda: get(f"/v1/patients/{pid}/media", auth["records"], {"limit": limit}), rounds)
        row(f"GET /v1/releasable, {n_media + 1} items", listing, media)

        async def release_and_download(purpose: str) -> None:
            item = handle if purpose == "social_media" else big_id  # de-identified items by their handle
            resp = await client.post(f"/v1/media/{item}/releases", json={"purpose": purpose, "recipient": "bench"},
                                     headers=auth["marketing"])
            made = await resp.json()
            await get(made["download_url"], auth["marketing"])

        content = await amedian(lambda: get(f"/v1/media/{big_id}/content", auth["records"]), rounds)
        row("release + download, original (2 MP)", await amedian(lambda: release_and_download("education"), rounds), content)
        row("release + download, de-identified (2 MP)", await amedian(lambda: release_and_download("social_media"), rounds), content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--media", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print("| measurement | median | baseline | ratio |\n|---|---|---|---|")
    bench_gate(args.rounds)
    bench_redaction(args.rounds)
    asyncio.run(bench_http(args.media, args.rounds))


if __name__ == "__main__":
    main()
