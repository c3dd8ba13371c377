"""Media jobs: finishing uploaded videos and shredding superseded originals."""

from __future__ import annotations

from datetime import timedelta

from vault.errors import MediaRejected
from vault.media import video
from workers.context import DeadJobContext, JobContext
from workers.registry import job, nothing_to_undo


async def fail_video(ctx: DeadJobContext, payload: dict) -> None:
    """Dead (worker lost after the last attempt, say): the video becomes ``failed`` and
    its original, with metadata and location, is shredded."""
    await ctx.runtime.media.fail_video(payload["media_id"], job_id=ctx.job_id, finish=ctx.complete_in)


@job(video.FINISH_JOB, time_limit=timedelta(hours=2), max_attempts=4, no_retry=(MediaRejected,), on_dead=fail_video)
async def finish_video(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.media.finish_video(payload["media_id"], job_id=ctx.job_id, last_attempt=ctx.last_attempt,
                                         finish=ctx.complete_in)


@job(video.SHRED_JOB, time_limit=timedelta(minutes=5), max_attempts=10,
     on_dead=nothing_to_undo("the blob's row is gone already: the leftover sweep (storage.sweep_leftovers) "
                             "shreds its key in the ledger and deletes it after the grace"))
async def shred_blob(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.media.shred_blob(payload["tenant_id"], payload["patient_id"], payload["blob_id"])
