"""Periodic jobs: however many workers tick at once, each period is enqueued once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from vault.db import Database
from vault.jobs import Job
from vault.jobs.queue import claim, complete
from vault.jobs.schedule import enqueue_due, next_boundary

HOUR = timedelta(hours=1)
SCHEDULE = {"retention.sweep": HOUR, "audit.checkpoint": timedelta(minutes=15)}


async def jobs_of(db: Database, kind: str) -> list[Job]:
    async with db.session() as session:
        return list((await session.execute(select(Job).where(Job.kind == kind).order_by(Job.created_at))).scalars())


def test_periods_are_aligned_to_the_epoch():
    now = datetime(2026, 11, 22, 10, 17, 3, tzinfo=UTC)
    assert next_boundary(now, HOUR) == datetime(2026, 11, 22, 11, tzinfo=UTC)
    assert next_boundary(datetime(2026, 11, 22, 11, tzinfo=UTC), HOUR) == datetime(2026, 11, 22, 12, tzinfo=UTC)
    assert next_boundary(now, timedelta(days=1)) == datetime(2026, 11, 23, tzinfo=UTC)


async def test_many_workers_ticking_together_enqueue_each_period_once(db, jobs_database):
    t0 = datetime(2026, 11, 22, 10, 17, tzinfo=UTC)
    workers = [Database(jobs_database.url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(enqueue_due(w, SCHEDULE, now=t0) for w in workers * 2))
        assert sorted(kind for result in results for kind in result) == sorted(SCHEDULE)
        # Later in the same period: nothing new.
        results = await asyncio.gather(*(enqueue_due(w, SCHEDULE, now=t0 + timedelta(minutes=10)) for w in workers))
        assert all(result == [] for result in results)
    finally:
        for worker in workers:
            await worker.close()
    [sweep] = await jobs_of(db, "retention.sweep")
    assert sweep.payload == '{"period_start":"2026-11-22T10:00:00+00:00"}'

    # The sweep finishes; the next hour brings exactly one more.
    [job] = await claim(db, kinds=["retention.sweep"], limit=1, lease=HOUR, worker="w", now=t0)
    async with db.transaction() as session:
        await complete(session, job.id, job.fence)
    t1 = datetime(2026, 11, 22, 11, 0, 1, tzinfo=UTC)
    assert await enqueue_due(db, {"retention.sweep": HOUR}, now=t1) == ["retention.sweep"]
    assert await enqueue_due(db, {"retention.sweep": HOUR}, now=t1) == []
    assert len(await jobs_of(db, "retention.sweep")) == 2


async def test_a_period_is_skipped_while_the_previous_run_is_pending(db):
    t0 = datetime(2026, 11, 22, 10, 17, tzinfo=UTC)
    assert await enqueue_due(db, {"retention.sweep": HOUR}, now=t0) == ["retention.sweep"]
    # Workers were down for three hours: one run is waiting, not four.
    for hours in (1, 2, 3):
        assert await enqueue_due(db, {"retention.sweep": HOUR}, now=t0 + hours * HOUR) == []
    assert len(await jobs_of(db, "retention.sweep")) == 1
