"""Release upkeep: redacted renditions of expired, unused release links are shredded; open
recalls are re-notified to the webhooks after ``VAULT_RECALL_RENOTIFY_HOURS``."""

from __future__ import annotations

from datetime import timedelta

from workers.context import JobContext
from workers.registry import nothing_to_undo, periodic


@periodic("releases.shred_expired", every=timedelta(minutes=15), time_limit=timedelta(minutes=10),
          on_dead=nothing_to_undo("each shred commits alone; the next period takes the rest"))
async def shred_expired_renditions(ctx: JobContext, payload: dict) -> None:
    # Each shred commits on its own and is idempotent, so a rerun after a crash is harmless.
    await ctx.runtime.releases.shred_expired()


@periodic("releases.renotify_recalls", every=timedelta(minutes=15), time_limit=timedelta(minutes=10),
          on_dead=nothing_to_undo("the re-notification commits with its events; the next period takes the rest"))
async def renotify_open_recalls(ctx: JobContext, payload: dict) -> None:
    after = timedelta(hours=ctx.runtime.settings.recall_renotify_hours)
    while await ctx.runtime.consents.renotify_open_recalls(after=after) == 500:
        pass  # a full batch: more may be waiting
