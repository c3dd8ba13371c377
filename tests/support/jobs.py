"""The one way tests run queued jobs: the real worker, in process, on the app's own
runtime, for the kinds a test names and only the jobs it made; it fails on timeout."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import func, select

from vault.db import utcnow
from vault.jobs.models import QUEUED, RUNNING, Job
from workers.jobs import load
from workers.registry import Registry
from workers.runner import Worker


async def drain(
    rt, *kinds: str, timeout: float = 60.0, since: datetime | None = None, due_only: bool = False
) -> None:
    """Run the real worker on ``kinds`` until no job of those kinds (made at or after
    ``since``, when given) is queued or running. With ``due_only``, a job queued for a
    later retry (``run_at`` in the future: another test's, in the shared database) does
    not hold it up. Raises TimeoutError instead of returning with work left."""
    if not kinds:
        raise ValueError("name the job kinds to run")
    full = load()
    registry = Registry()
    for kind in kinds:
        registry.register(full.get(kind))
    worker = Worker(rt, registry, concurrency=2, lease=timedelta(seconds=30), poll_interval=0.02, shutdown_grace=5,
                    name="test-drain")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while await pending(rt, kinds, since=since, due_only=due_only):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def pending(rt, kinds, *, since: datetime | None = None, due_only: bool = False) -> int:
    queued = (Job.state == QUEUED) & (Job.run_at <= utcnow()) if due_only else Job.state == QUEUED
    query = select(func.count()).select_from(Job).where(Job.kind.in_(kinds), (Job.state == RUNNING) | queued)
    if since is not None:
        query = query.where(Job.created_at >= since)
    async with rt.db.session() as session:
        return (await session.execute(query)).scalar_one()
