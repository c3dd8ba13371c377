"""Worker heartbeats: every running worker touches its row every few seconds, so
readiness can tell an operator that jobs (exports, erasure clean-up, key rotation)
are not being run — without failing requests, which do not need a worker."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from vault.db import Database, utcnow
from vault.jobs.models import WorkerHeartbeat

log = logging.getLogger("vault.worker")

BEAT_EVERY = timedelta(seconds=10)
# Three missed beats: long enough for a GC pause or a busy database, short enough
# that an operator hears about a dead worker within a minute.
STALE_AFTER = BEAT_EVERY * 3 + timedelta(seconds=5)
FORGET_AFTER = timedelta(days=1)  # rows of workers that died without saying goodbye


async def beat(db: Database, name: str, *, kinds: int) -> None:
    now = utcnow()
    insert = pg_insert if db.dialect == "postgresql" else sqlite_insert
    statement = insert(WorkerHeartbeat).values(name=name, kinds=kinds, started_at=now, seen_at=now)
    statement = statement.on_conflict_do_update(index_elements=["name"], set_={"seen_at": now, "kinds": kinds})
    async with db.transaction() as session:
        await session.execute(statement)
        await session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_AFTER))


async def forget(db: Database, name: str) -> None:
    async with db.transaction() as session:
        await session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == name))


async def live_workers(db: Database) -> int:
    async with db.session() as session:
        count = await session.scalar(
            select(func.count()).select_from(WorkerHeartbeat).where(WorkerHeartbeat.seen_at >= utcnow() - STALE_AFTER)
        )
    return int(count or 0)


async def keep_beating(db: Database, name: str, *, kinds: int, stop: asyncio.Event) -> None:
    """Beat until ``stop`` is set, then remove the row. A failed beat is logged and
    retried at the next tick: the worker keeps working while the database hiccups."""
    try:
        while not stop.is_set():
            try:
                await beat(db, name, kinds=kinds)
            except Exception as exc:  # noqa: BLE001 - a missed beat must not stop the worker
                log.warning("worker heartbeat failed", extra={"error": type(exc).__name__})
            try:
                await asyncio.wait_for(stop.wait(), BEAT_EVERY.total_seconds())
            except TimeoutError:
                pass
    finally:
        try:
            await asyncio.wait_for(forget(db, name), 5)
        except Exception:  # noqa: BLE001 - the row goes stale on its own
            pass
