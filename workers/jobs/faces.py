"""The full-resolution face search of an uploaded photo (vault/media/faces.py)."""

from __future__ import annotations

from datetime import timedelta

from vault.media.faces import SEARCH_JOB, FaceSearches
from workers.context import DeadJobContext, JobContext
from workers.registry import job


def _searches(ctx: JobContext | DeadJobContext) -> FaceSearches:
    media = ctx.runtime.media
    return FaceSearches(media.db, media.audit, media.sealed, media.pipeline)


async def give_up(ctx: DeadJobContext, payload: dict) -> None:
    """Dead (worker lost after the last attempt): the photo is ``incomplete``, for a person."""
    await _searches(ctx).give_up(payload["media_id"], job_id=ctx.job_id, finish=ctx.complete_in)


@job(SEARCH_JOB, time_limit=timedelta(minutes=10), max_attempts=4, on_dead=give_up)
async def search_faces(ctx: JobContext, payload: dict) -> None:
    await _searches(ctx).run(payload["media_id"], job_id=ctx.job_id, last_attempt=ctx.last_attempt,
                             finish=ctx.complete_in)
