"""Job kinds for the worker process tests, loaded with
``VAULT_WORKER_IMPORTS=tests.workers.sample_jobs``."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from tests.workers.effects import record_effect
from workers.context import JobContext
from workers.registry import Backoff, job, nothing_to_undo

TEST = nothing_to_undo("a test job leaves nothing to repair")


@job("test.effect", on_dead=TEST, time_limit=timedelta(seconds=30), backoff=Backoff(base=timedelta(milliseconds=100)))
async def write_effect(ctx: JobContext, payload: dict) -> None:
    async with ctx.transaction() as session:
        await record_effect(session, payload["key"], attempt=ctx.attempt)


@job("test.slow_effect", on_dead=TEST, time_limit=timedelta(minutes=5), backoff=Backoff(base=timedelta(milliseconds=100)))
async def write_effect_slowly(ctx: JobContext, payload: dict) -> None:
    # Long on the first attempt (the test kills that worker), quick on a retry.
    await asyncio.sleep(payload["first_seconds"] if ctx.attempt == 1 else payload["retry_seconds"])
    async with ctx.transaction() as session:
        await record_effect(session, payload["key"], attempt=ctx.attempt)
