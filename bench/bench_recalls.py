"""The recall list by state and the take-down (issue 18), against a baseline in the same run.

    .venv/bin/python bench/bench_recalls.py [--releases 100] [--rounds 15]

In-process app on SQLite (fresh temp folder): N releases of one photo, all recalled by a
withdrawal, half of them taken down. Baseline: ``GET /v1/releases?limit=200`` (every
release); measured: ``?state=recalled`` and ``?state=taken_down`` (each half of them), and
the periodic re-notification over the open half. Medians; ratios > 1 mean slower.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _seed import amedian, jpeg, seeded  # noqa: E402


async def main(n: int, rounds: int) -> None:
    from vault.consent.models import Release
    from vault.db import utcnow

    async with seeded(("practitioner", "dpo", "marketing"), patient_by="dpo") as s:
        client, runtime, auth = s.client, s.runtime, s.auth
        media = await s.upload(jpeg(color=(120, 90, 60)))
        grant = await s.consent({"purposes": ["education"], "identifiable": True})
        ids = []
        for i in range(n):
            resp = await client.post(f"/v1/media/{media}/releases", json={"purpose": "education", "recipient": f"r{i}"},
                                     headers=auth["marketing"])
            ids.append((await resp.json())["id"])
        await client.post(f"/v1/consents/{grant}/withdraw", headers=auth["dpo"])
        takedown = []
        for release_id in ids[: n // 2]:
            t0 = time.perf_counter()
            resp = await client.post(f"/v1/releases/{release_id}/takedown", headers=auth["marketing"])
            takedown.append(time.perf_counter() - t0)
            assert resp.status == 201

        async def listing(**params: str) -> None:
            async with client.get("/v1/releases", params={"limit": "200", **params}, headers=auth["marketing"]) as r:
                assert r.status == 200
                await r.read()

        async def renotify() -> None:
            from sqlalchemy import update
            async with runtime.db.transaction() as session:  # due again each round
                await session.execute(update(Release).values(recall_renotified_at=None))
            await runtime.consents.renotify_open_recalls(after=timedelta(hours=1), now=utcnow() + timedelta(hours=2))

        base = await amedian(lambda: listing(), rounds)
        print(f"| measurement ({n} releases, half taken down) | median | vs baseline |\n|---|---:|---:|")
        print(f"| `GET /v1/releases?limit=200` (baseline, {n} items) | {base * 1e3:.1f} ms | 1.00× |")
        for state in ("recalled", "taken_down"):
            t = await amedian(lambda: listing(state=state), rounds)
            print(f"| `GET /v1/releases?state={state}` ({n // 2} items) | {t * 1e3:.1f} ms | {t / base:.2f}× |")
        t = statistics.median(takedown)
        print(f"| `POST /v1/releases/{{id}}/takedown` (one) | {t * 1e3:.1f} ms | {t / base:.2f}× |")
        t = await amedian(renotify, rounds)
        print(f"| re-notification of {n - n // 2} open recalls (one job run, no endpoint) | {t * 1e3:.1f} ms | {t / base:.2f}× |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main(args.releases, args.rounds))
