"""Webhook deliveries: one job per (event, endpoint), retried with backoff."""

from __future__ import annotations

from datetime import timedelta

from workers.context import DeadJobContext, JobContext
from workers.registry import Backoff, job

#: 8 attempts over roughly an hour and a half (30 s doubling, capped at 30 min)
BACKOFF = Backoff(base=timedelta(seconds=30), cap=timedelta(minutes=30))


async def give_up_delivery(ctx: DeadJobContext, payload: dict) -> None:
    await ctx.runtime.webhooks.give_up(payload["delivery_id"], error=ctx.error)


@job("webhooks.deliver", time_limit=timedelta(minutes=1), max_attempts=8, backoff=BACKOFF, on_dead=give_up_delivery)
async def deliver_webhook(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.webhooks.deliver(payload["delivery_id"], last_attempt=ctx.last_attempt, finish=ctx.complete_in)
