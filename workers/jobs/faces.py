"""The full-resolution face search of an uploaded photo (vault/media/faces.py)."""

from __future__ import annotations

from datetime import timedelta

from vault.media.faces import RECONCILE_JOB, SEARCH_JOB, FaceSearches, reconcile_searches
from workers.context import DeadJobContext, JobContext
from workers.registry import job, nothing_to_undo, periodic


def _searches(ctx: JobContext | DeadJobContext) -> FaceSearches:
    media = ctx.runtime.media
    return FaceSearches(media.db, media.audit, media.sealed, media.pipeline)


async def give_up(ctx: DeadJobContext, payload: dict) -> None:
    """Dead (worker lost after the last attempt): the photo is ``incomplete``, for a person."""
    await _searches(ctx).give_up(payload["media_id"], job_id=ctx.job_id, finish=ctx.complete_in,
                                 again=bool(payload.get("again")))


@job(SEARCH_JOB, time_limit=timedelta(minutes=10), max_attempts=4, on_dead=give_up)
async def search_faces(ctx: JobContext, payload: dict) -> None:
    await _searches(ctx).run(payload["media_id"], job_id=ctx.job_id, last_attempt=ctx.last_attempt,
                             finish=ctx.complete_in, again=bool(payload.get("again")))


# Every 5 minutes: a ``pending`` photo whose search job is gone is searched again (until
# then it cannot be released de-identified), and a bounded batch of photos stored before
# the current detector set (``incomplete``, searched on a 640 px copy) is searched with it.
@periodic(RECONCILE_JOB, every=timedelta(minutes=5), time_limit=timedelta(minutes=5),
          on_dead=nothing_to_undo("it only queues searches; the next period queues them again"))
async def reconcile_faces(ctx: JobContext, payload: dict) -> None:
    await reconcile_searches(ctx.db)
