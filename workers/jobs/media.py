"""Media jobs: finishing uploaded videos and shredding superseded originals."""

from __future__ import annotations

from datetime import timedelta

from vault.errors import MediaRejected
from vault.media import video
from workers.context import JobContext
from workers.registry import job


@job(video.FINISH_JOB, time_limit=timedelta(hours=2), max_attempts=4, no_retry=(MediaRejected,))
async def finish_video(ctx: JobContext, payload: dict) -> None:
    await video.finish_video(ctx, payload["media_id"])


@job(video.SHRED_JOB, time_limit=timedelta(minutes=5), max_attempts=10)
async def shred_blob(ctx: JobContext, payload: dict) -> None:
    await video.shred_blob(ctx, payload["tenant_id"], payload["patient_id"], payload["blob_id"])
