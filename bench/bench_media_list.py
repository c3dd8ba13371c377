"""The media list with ``since`` and inline capture dates, against baselines in the same run.

    .venv/bin/python bench/bench_media_list.py [--media 100] [--rounds 15]

In-process app, SQLite, fresh temp folder, one patient with N photos (each with EXIF, so
each has a capture date to open):
- ``GET /v1/patients/{id}/media?since=…`` (keyset on updated_at, id) vs the same list
  without ``since`` (by id), both a single page of N items;
- the service's page with capture dates inline (one sealed field opened per item) vs the
  same page without them (what the list did before issue 19).
Medians of the rounds; ratios > 1 mean slower than the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _seed import amedian, seeded  # noqa: E402


def row(name: str, value: float, baseline: float) -> None:
    print(f"| {name} | {value * 1e3:.2f} ms | {baseline * 1e3:.2f} ms | {value / baseline:.2f} |")


async def bench(n_media: int, rounds: int) -> None:
    from tests.pipeline.samples import jpeg_with_everything
    from vault.actor import Actor

    async with seeded(("practitioner", "records"), patient_by="practitioner") as s:
        client, rt, auth, pid = s.client, s.runtime, s.auth, s.patient_id
        photo = jpeg_with_everything(trailer="")
        for _ in range(n_media):
            await s.upload(photo)

        async def get(params) -> None:
            async with client.get(f"/v1/patients/{pid}/media", headers=auth["records"], params=params) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
                assert len(body["items"]) == n_media and body["items"][0]["captured_at"]

        limit = str(n_media)
        since = await amedian(lambda: get({"limit": limit, "since": "2000-01-01T00:00:00Z"}), rounds)
        plain = await amedian(lambda: get({"limit": limit}), rounds)
        row(f"GET media list with since, {n_media} items", since, plain)

        tenant = (await rt.tenants.authenticate(auth["records"]["Authorization"].split()[1])).tenant_id
        actor = Actor(tenant, "bench", "records", "bench")

        async def page(captured_at: bool) -> None:
            await rt.media.page(actor, pid, cursor=None, limit=n_media, phase=None, treatment_id=None, captured_at=captured_at)

        row(f"service page with capture dates, {n_media} items", await amedian(lambda: page(True), rounds),
            await amedian(lambda: page(False), rounds))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--media", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print("| measurement | median | baseline | ratio |\n|---|---|---|---|")
    asyncio.run(bench(args.media, args.rounds))


if __name__ == "__main__":
    main()
