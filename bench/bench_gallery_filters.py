"""The releasable listing's filters (issue 18), against the unfiltered listing in the same run.

    .venv/bin/python bench/bench_gallery_filters.py [--patients 10] [--photos 6] [--rounds 15]

In-process app on SQLite (fresh temp folder): P patients, each with one treatment (half of
them typed "Lip filler", half "Chemical peel") and K photos under an identifiable consent.
Baseline: ``GET /v1/releasable?purpose=education&limit=200`` (every item); measured: the
same listing by treatment type, by year, by phase and dates (``rendition=original``), and
``POST /v1/releasable/search`` by a part of the treatment's name (sealed: opened per item
after the gate). Medians; ratios > 1 mean slower.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from PIL import Image  # noqa: E402

from _seed import amedian, bench_app  # noqa: E402


async def main(patients: int, photos: int, rounds: int) -> None:
    async with bench_app(("practitioner", "dpo", "marketing")) as (client, runtime, auth):
        types = (await (await client.put("/v1/treatment-types", json={"names": ["Lip filler", "Chemical peel"]},
                                         headers=auth["dpo"])).json())["items"]
        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (120, 90, 60)).save(buf, "JPEG")
        for p in range(patients):
            pid = (await (await client.post("/v1/patients", json={"external_ref": f"BENCH-{p}"}, headers=auth["dpo"])).json())["id"]
            treatment = (await (await client.post(f"/v1/patients/{pid}/treatments", headers=auth["practitioner"], json={
                "name": "Upper lip filler" if p % 2 else "Glycolic peel", "performed_on": "2026-03-01",
                "type_id": types[p % 2]["id"]})).json())["id"]
            for k in range(photos):
                resp = await client.post(f"/v1/patients/{pid}/media", data=buf.getvalue(),
                                         params={"phase": "before" if k % 2 else "after", "treatment_id": treatment},
                                         headers={**auth["practitioner"], "Content-Type": "image/jpeg"})
                assert resp.status == 201
            await client.post(f"/v1/patients/{pid}/consents", json={"purposes": ["education"], "identifiable": True},
                              headers=auth["dpo"])

        async def listing(**params: str) -> int:
            async with client.get("/v1/releasable", params={"purpose": "education", "limit": "200", **params},
                                  headers=auth["marketing"]) as r:
                assert r.status == 200
                return len((await r.json())["items"])

        async def search(**body: str) -> int:
            async with client.post("/v1/releasable/search", json={"purpose": "education", "limit": 200, **body},
                                   headers=auth["marketing"]) as r:
                assert r.status == 200
                return len((await r.json())["items"])

        today = datetime.now(UTC).date().isoformat()
        base, n = await amedian(listing, rounds), await listing()
        print(f"| measurement ({patients} patients x {photos} photos) | items | median | vs baseline |\n|---|---:|---:|---:|")
        print(f"| `GET /v1/releasable` unfiltered (baseline) | {n} | {base * 1e3:.1f} ms | 1.00× |")
        cases: list[tuple[str, Callable[[], Awaitable[int]]]] = [
            ("`treatment_type=`", lambda: listing(treatment_type=types[1]["id"])),
            ("`year=` (this year: every item)", lambda: listing(year=str(datetime.now(UTC).year))),
            ("`rendition=deidentified&treatment_type=&year=` (none)",
             lambda: listing(rendition="deidentified", treatment_type=types[1]["id"], year=str(datetime.now(UTC).year))),
            ("`rendition=original&phase=after&taken_from=&taken_to=`",
             lambda: listing(rendition="original", phase="after", taken_from=today, taken_to=today)),
            ("`POST /v1/releasable/search` by treatment name", lambda: search(rendition="original", treatment="lip")),
        ]
        for label, action in cases:
            t, n = await amedian(action, rounds), await action()
            print(f"| {label} | {n} | {t * 1e3:.1f} ms | {t / base:.2f}× |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.patients, args.photos, args.rounds))
