"""Lifecycle jobs: the clean-up after an erasure or a media deletion, subject-access
exports, finishing interrupted erasures, retention sweeps and export expiry."""

from __future__ import annotations

from datetime import timedelta

from vault.jobs.queue import describe_error
from vault.lifecycle.erasure import PURGE_MEDIA, PURGE_PATIENT
from vault.lifecycle.exports import BUILD_EXPORT
from workers.context import JobContext
from workers.registry import job, periodic


@job(PURGE_PATIENT, time_limit=timedelta(hours=1), max_attempts=10)
async def purge_patient(ctx: JobContext, payload: dict) -> None:
    """Delete every blob of an erased patient, then recall releases and notify webhooks."""
    await ctx.runtime.lifecycle.purger.purge_patient(payload["tenant_id"], payload["patient_id"],
                                                     erasure_id=payload["erasure_id"], finish=ctx.complete_in)


@job(PURGE_MEDIA, time_limit=timedelta(minutes=10), max_attempts=10)
async def purge_media(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.lifecycle.purger.purge_media(payload["media_id"], finish=ctx.complete_in)


@job(BUILD_EXPORT, time_limit=timedelta(hours=2), max_attempts=3)
async def build_export(ctx: JobContext, payload: dict) -> None:
    exports = ctx.runtime.lifecycle.exports
    try:
        await exports.build(payload["export_id"], job_id=ctx.job_id, finish=ctx.complete_in)
    except Exception as exc:
        if ctx.last_attempt:
            await exports.fail(payload["export_id"], error=describe_error(exc))
        raise


# Every minute: an erasure whose key is destroyed but whose tombstone and receipt are
# not yet written (a crash in between) must not wait long to be finished.
@periodic("lifecycle.reconcile", every=timedelta(minutes=1), time_limit=timedelta(minutes=10))
async def reconcile_erasures(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.lifecycle.erasure.reconcile(request_id=f"job-{ctx.job_id}")


@periodic("retention.sweep", every=timedelta(hours=1), time_limit=timedelta(minutes=30))
async def sweep_retention(ctx: JobContext, payload: dict) -> None:
    """A real sweep of every tenant, within the limits (never over the cap, never on a
    policy younger than 24 h): anything more needs a DPO's reviewed dry run."""
    tenants = [t.id for t in await ctx.runtime.tenants.tenants()]
    await ctx.runtime.lifecycle.retention.sweep_all(request_id=f"job-{ctx.job_id}", tenants=tenants)


@periodic("lifecycle.expire_exports", every=timedelta(minutes=15), time_limit=timedelta(minutes=10))
async def expire_exports(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.lifecycle.exports.expire()
