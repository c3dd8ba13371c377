"""Periodic jobs: each period is enqueued once, however many workers tick.

Every worker calls :func:`enqueue_due` now and then. A kind is due when its row in
``job_schedules`` says so (or has no row yet: a new kind runs at once). The first
worker to move ``next_run_at`` past now with ``UPDATE ... WHERE next_run_at <= now``
enqueues the job in the same transaction; the others' UPDATE matches no row. On
PostgreSQL the row lock makes the losers re-check the moved value; SQLite has one
writer. Periods are aligned to the Unix epoch, so restarts do not shift them.

If the previous run of a kind is still queued or running (workers were down, or a
sweep takes longer than its period), the period is skipped rather than piled up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vault.db import Database, rowcount, utcnow
from vault.jobs.models import QUEUED, RUNNING, Job, JobSchedule
from vault.jobs.queue import enqueue

schedules = cast(Table, JobSchedule.__table__)
jobs = cast(Table, Job.__table__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def next_boundary(now: datetime, every: timedelta) -> datetime:
    """The first multiple of ``every`` since the epoch strictly after ``now``."""
    return EPOCH + ((now - EPOCH) // every + 1) * every


async def enqueue_due(db: Database, periodic: Mapping[str, timedelta], *, now: datetime | None = None) -> list[str]:
    """Enqueue each periodic kind whose period has come; return the kinds enqueued."""
    if not periodic:
        return []
    now = now or utcnow()
    async with db.session() as session:
        seen = {kind: at for kind, at in await session.execute(select(schedules.c.kind, schedules.c.next_run_at))}
    due = [kind for kind in periodic if kind not in seen or seen[kind] <= now]
    if not due:
        return []
    enqueued: list[str] = []
    async with db.transaction() as session:
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        for kind in due:
            next_at = next_boundary(now, periodic[kind])
            if kind in seen:
                result = await session.execute(
                    update(schedules)
                    .where(schedules.c.kind == kind, schedules.c.next_run_at <= now)
                    .values(next_run_at=next_at)
                )
            else:
                result = await session.execute(
                    insert(schedules)
                    .values(kind=kind, next_run_at=next_at)
                    .on_conflict_do_nothing(index_elements=["kind"])
                )
            if rowcount(result) != 1:
                continue  # another worker took this period
            pending = await session.execute(
                select(jobs.c.id).where(jobs.c.kind == kind, jobs.c.state.in_((QUEUED, RUNNING))).limit(1)
            )
            if pending.first() is not None:
                continue
            period_start = next_at - periodic[kind]
            await enqueue(session, kind, {"period_start": period_start.isoformat()}, run_at=now)
            await session.execute(update(schedules).where(schedules.c.kind == kind).values(last_enqueued_at=now))
            enqueued.append(kind)
    return enqueued
