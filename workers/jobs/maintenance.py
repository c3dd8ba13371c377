"""Upkeep of the job queue itself."""

from __future__ import annotations

from datetime import timedelta

from vault.db import utcnow
from vault.jobs.queue import prune
from workers.context import JobContext
from workers.registry import nothing_to_undo, periodic

KEEP_DONE = timedelta(days=7)


@periodic("jobs.prune", every=timedelta(hours=6), time_limit=timedelta(minutes=5),
          on_dead=nothing_to_undo("a delete of old rows; the next period deletes them"))
async def prune_done_jobs(ctx: JobContext, payload: dict) -> None:
    """Delete finished jobs after a week; dead jobs stay until an operator looks."""
    await prune(ctx.db, done_before=utcnow() - KEEP_DONE)
