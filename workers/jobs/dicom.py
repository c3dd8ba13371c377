"""The DICOM export job: build the file in a decoder worker and send it by STOW-RS."""

from __future__ import annotations

from datetime import timedelta

from vault.dicom.service import SEND_DICOM, DicomRefused, failure_code
from workers.context import DeadJobContext, JobContext
from workers.registry import Backoff, job


async def fail_dicom_export(ctx: DeadJobContext, payload: dict) -> None:
    """Dead: the export says ``failed`` with the last error (nothing was stored here)."""
    await ctx.runtime.dicom.fail_unfinished(payload["export_id"], error=ctx.error.split(":", 1)[-1].strip()[:100]
                                            or "dead", job_id=ctx.job_id)


# A PACS that is down for maintenance gets about an hour and a half before the export
# reports failed: 30 s, 1, 2, 4, 8, 16, 30, 30 min (half to all of each, jittered).
@job(SEND_DICOM, time_limit=timedelta(minutes=10), max_attempts=8, on_dead=fail_dicom_export,
     backoff=Backoff(base=timedelta(seconds=30), cap=timedelta(minutes=30)), no_retry=(DicomRefused,))
async def send_dicom_export(ctx: JobContext, payload: dict) -> None:
    exports = ctx.runtime.dicom
    try:
        await exports.send(payload["export_id"], job_id=ctx.job_id, finish=ctx.complete_in)
    except Exception as exc:
        await exports.note_failure(payload["export_id"], error=failure_code(exc),
                                   final=ctx.last_attempt or isinstance(exc, DicomRefused), job_id=ctx.job_id)
        raise
