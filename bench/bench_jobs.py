"""Jobs per second through the queue, against plain INSERT + UPDATE of the same rows.

    .venv/bin/python bench/bench_jobs.py                       # SQLite (+ PostgreSQL if
                                                                # VAULT_TEST_DATABASE_URL is set)
    .venv/bin/python bench/bench_jobs.py --pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/bench_jobs.py --jobs 100 --repeat 1  # a quick look

Each backend gets a fresh, migrated database. Every round, on an emptied job table:

- baseline: each row INSERTed into ``jobs`` in its own transaction, then UPDATEd to
  done in its own transaction — the least a durable queue can cost per job.
- queue: ``enqueue`` (one transaction per job, as a request would), ``claim`` in
  batches of 10, ``complete`` each in its own transaction — the same rows.
- worker: the same number of pre-enqueued no-op jobs drained by a ``Worker`` with 4
  slots (claim, handler task, fenced completion), against the baseline's UPDATE half.

Medians of the rounds; ratios > 1 mean slower than the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import delete, update  # noqa: E402

from tests.support.databases import PG_ENV, fresh_database  # noqa: E402
from vault.config import Settings  # noqa: E402
from vault.db import Database, new_id, utcnow  # noqa: E402
from vault.jobs import DONE, QUEUED, enqueue  # noqa: E402
from vault.jobs.models import Job  # noqa: E402
from vault.jobs.queue import claim, complete  # noqa: E402
from vault.migrate import upgrade  # noqa: E402
from vault.runtime import runtime  # noqa: E402
from workers.registry import Registry  # noqa: E402
from workers.runner import Worker  # noqa: E402

jobs = Job.__table__
LEASE = timedelta(minutes=5)


async def clear(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(delete(jobs))


async def baseline(db: Database, n: int) -> tuple[float, float]:
    ids = [new_id() for _ in range(n)]
    start = time.perf_counter()
    for job_id in ids:
        async with db.transaction() as session:
            await session.execute(
                jobs.insert().values(
                    id=job_id, kind="bench.noop", payload='{"n":1}', state=QUEUED, attempts=0, fence=0,
                    run_at=utcnow(), created_at=utcnow(),
                )
            )
    inserted = time.perf_counter()
    for job_id in ids:
        async with db.transaction() as session:
            await session.execute(update(jobs).where(jobs.c.id == job_id).values(state=DONE, finished_at=utcnow()))
    return time.perf_counter() - start, time.perf_counter() - inserted


async def queue_cycle(db: Database, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        async with db.transaction() as session:
            await enqueue(session, "bench.noop", {"n": i})
    while batch := await claim(db, kinds=["bench.noop"], limit=10, lease=LEASE, worker="bench"):
        for job in batch:
            async with db.transaction() as session:
                await complete(session, job.id, job.fence)
    return time.perf_counter() - start


async def worker_drain(settings: Settings, n: int) -> float:
    registry, finished = Registry(), asyncio.Event()
    done = 0

    @registry.job("bench.noop")
    async def noop(ctx, payload) -> None:
        nonlocal done
        async with ctx.transaction():
            pass
        done += 1
        if done == n:
            finished.set()

    async with runtime(settings, group_commit=False) as rt:
        async with rt.db.transaction() as session:
            for i in range(n):
                await enqueue(session, "bench.noop", {"n": i})
        worker = Worker(rt, registry, concurrency=4, lease=LEASE, poll_interval=0.01)
        stop = asyncio.Event()
        start = time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        await finished.wait()
        elapsed = time.perf_counter() - start
        stop.set()
        await task
    return elapsed


async def run_backend(name: str, url: str, keystore_url: str, folder: Path, *, n: int, repeat: int) -> dict:
    settings = Settings(
        data_dir=folder, database_url=url, keystore_url=keystore_url, storage_url=(folder / "blobs").as_uri(),
        root_key_url=(folder / "root.key").as_uri(), inprocess_jobs=False,
    )
    db = Database(url)
    rounds: dict[str, list[float]] = {"baseline": [], "baseline_update": [], "queue": [], "worker": []}
    try:
        for _ in range(repeat):
            await clear(db)
            total, updates = await baseline(db, n)
            rounds["baseline"].append(total)
            rounds["baseline_update"].append(updates)
            await clear(db)
            rounds["queue"].append(await queue_cycle(db, n))
            await clear(db)
            rounds["worker"].append(await worker_drain(settings, n))
    finally:
        await db.close()
    median = {key: statistics.median(values) for key, values in rounds.items()}
    # Ratios are taken per round (the machine is shared: its speed drifts between
    # rounds more than within one), then their median and range are shown.
    queue_ratio = [q / b for q, b in zip(rounds["queue"], rounds["baseline"], strict=True)]
    worker_ratio = [w / u for w, u in zip(rounds["worker"], rounds["baseline_update"], strict=True)]
    print(f"\n{name}: {n} jobs, median of {repeat} rounds (ratio: time against the baseline; min-max)")
    print(f"  baseline INSERT+UPDATE   {n / median['baseline']:8.0f} jobs/s")
    print(f"  queue enqueue+claim+done {n / median['queue']:8.0f} jobs/s   ratio {_ratio(queue_ratio)}")
    print(f"  baseline UPDATE only     {n / median['baseline_update']:8.0f} jobs/s")
    print(f"  worker drain (4 slots)   {n / median['worker']:8.0f} jobs/s   ratio {_ratio(worker_ratio)} (vs UPDATE only)")
    return median


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg-url", help="PostgreSQL server URL (default: $VAULT_TEST_DATABASE_URL)")
    args = parser.parse_args()
    if args.pg_url:
        os.environ[PG_ENV] = args.pg_url
    import logging

    logging.getLogger("keys.providers").setLevel(logging.ERROR)  # the dev root-key warning
    backends = ["sqlite"] + (["postgresql"] if os.environ.get(PG_ENV) else [])
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp, fresh_database(backend, Path(tmp)) as database:
            upgrade(database.url)
            asyncio.run(
                run_backend(backend, database.url, database.keystore_url, Path(tmp), n=args.jobs, repeat=args.repeat)
            )


if __name__ == "__main__":
    main()
