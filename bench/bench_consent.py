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
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from PIL import Image  # noqa: E402

from bench_pipeline import sample_jpeg  # noqa: E402
from vault.consent import gate  # noqa: E402
from vault.pipeline.redact import render_redaction  # noqa: E402


def median_seconds(action: Callable[[], object], runs: int) -> float:
    action()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def amedian(action: Callable[[], Awaitable[object]], runs: int) -> float:
    await action()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await action()
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
    from aiohttp.test_utils import TestClient, TestServer

    from keys.migrate import upgrade as upgrade_keys
    from vault.app import create_app
    from vault.appkeys import RUNTIME
    from vault.config import Settings
    from vault.migrate import upgrade

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        settings = Settings(data_dir=data, database_url=f"sqlite+aiosqlite:///{data / 'vault.sqlite3'}",
                            keystore_url=f"sqlite+aiosqlite:///{data / 'keys.sqlite3'}", storage_url=(data / "blobs").as_uri(),
                            root_key_url=(data / "root.key").as_uri(), inprocess_jobs=False)
        await asyncio.to_thread(upgrade, settings.database_url)
        await upgrade_keys(settings.keystore_url)
        async with TestClient(TestServer(create_app(settings))) as client:
            tenants = client.server.app[RUNTIME].tenants
            await tenants.create_tenant("bench", request_id="bench")
            auth = {}
            for role in ("practitioner", "dpo", "marketing", "records"):
                token = (await tenants.create_token("bench", role, label=f"bench {role}", request_id="bench")).token
                auth[role] = {"Authorization": f"Bearer {token}"}
            pid = (await (await client.post("/v1/patients", json={"external_ref": "BENCH-1"}, headers=auth["dpo"])).json())["id"]
            small = io.BytesIO()
            Image.new("RGB", (320, 240), (140, 110, 90)).save(small, "JPEG", quality=85)
            for _ in range(n_media):
                resp = await client.post(f"/v1/patients/{pid}/media", data=small.getvalue(),
                                         headers={**auth["practitioner"], "Content-Type": "image/jpeg"})
                assert resp.status == 201
            photo = sample_jpeg(1600, 1200)
            resp = await client.post(f"/v1/patients/{pid}/media", data=photo, headers={**auth["practitioner"], "Content-Type": "image/jpeg"})
            big_id = (await resp.json())["id"]
            await client.post(f"/v1/patients/{pid}/consents", json={"purposes": ["education"], "identifiable": True}, headers=auth["dpo"])
            await client.post(f"/v1/patients/{pid}/consents", json={"purposes": ["social_media"], "identifiable": False,
                                                                     "media_ids": [big_id]}, headers=auth["dpo"])
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
