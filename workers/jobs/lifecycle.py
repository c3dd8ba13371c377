"""Lifecycle jobs: the clean-up after an erasure or a media deletion, subject-access
exports, finishing interrupted erasures, retention sweeps and export expiry."""

from __future__ import annotations

import logging
from datetime import timedelta

from vault.jobs.queue import describe_error
from vault.lifecycle.erasure import PURGE_MEDIA, PURGE_PATIENT
from vault.lifecycle.exports import BUILD_EXPORT
from vault.lifecycle.stuck import stuck_items
from workers.context import DeadJobContext, JobContext
from workers.registry import NothingToUndo, job, nothing_to_undo, periodic, registry

log = logging.getLogger("vault.worker.lifecycle")

_PURGE_DEAD = nothing_to_undo(
    "the keys were shredded before the job was queued: only unreadable ciphertext and its rows remain, "
    "shown by `vault jobs list`; the job can be re-queued once the store is back")


@job(PURGE_PATIENT, time_limit=timedelta(hours=1), max_attempts=10, on_dead=_PURGE_DEAD)
async def purge_patient(ctx: JobContext, payload: dict) -> None:
    """Delete every blob of an erased patient, then recall releases and notify webhooks."""
    await ctx.runtime.lifecycle.purger.purge_patient(payload["tenant_id"], payload["patient_id"],
                                                     erasure_id=payload["erasure_id"], finish=ctx.complete_in)


@job(PURGE_MEDIA, time_limit=timedelta(minutes=10), max_attempts=10, on_dead=_PURGE_DEAD)
async def purge_media(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.lifecycle.purger.purge_media(payload["media_id"], finish=ctx.complete_in)


async def fail_export(ctx: DeadJobContext, payload: dict) -> None:
    """Dead: the export says ``failed`` (a half-built archive never had a row; the
    leftover sweep removes its blob after the grace)."""
    await ctx.runtime.lifecycle.exports.fail(payload["export_id"], error=ctx.error.split(":", 1)[0])


@job(BUILD_EXPORT, time_limit=timedelta(hours=2), max_attempts=3, on_dead=fail_export)
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
@periodic("lifecycle.reconcile", every=timedelta(minutes=1), time_limit=timedelta(minutes=10),
          on_dead=nothing_to_undo("it only repairs; the next minute repairs again"))
async def reconcile_erasures(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.lifecycle.erasure.reconcile(request_id=f"job-{ctx.job_id}")
    # Items left in an intermediate state by a job that died without its dead path
    # (a crash between "dead" and the repair): run that path now.
    await run_dead_paths(ctx, await stuck_items(ctx.db))


async def run_dead_paths(ctx: JobContext, items: list[tuple[str, dict]]) -> None:
    for kind, payload in items:
        spec = registry.get(kind)
        if isinstance(spec.on_dead, NothingToUndo):
            continue
        dead = DeadJobContext(job_id=ctx.job_id, kind=kind, error="Stuck: no live job", runtime=ctx.runtime)
        try:
            await spec.on_dead(dead, payload)
        except Exception:
            log.exception("could not repair a stuck item", extra={"kind": kind})


@periodic("retention.sweep", every=timedelta(hours=1), time_limit=timedelta(minutes=30),
          on_dead=nothing_to_undo("each erasure is complete or reconciled; the next period sweeps again"))
async def sweep_retention(ctx: JobContext, payload: dict) -> None:
    """A real sweep of every tenant, within the limits (never over the cap, never on a
    policy younger than 24 h): anything more needs a DPO's reviewed dry run."""
    tenants = [t.id for t in await ctx.runtime.tenants.tenants()]
    await ctx.runtime.lifecycle.retention.sweep_all(request_id=f"job-{ctx.job_id}", tenants=tenants)


@periodic("lifecycle.expire_exports", every=timedelta(minutes=15), time_limit=timedelta(minutes=10),
          on_dead=nothing_to_undo("each shred commits alone; the next period takes the rest"))
async def expire_exports(ctx: JobContext, payload: dict) -> None:
    await ctx.runtime.lifecycle.exports.expire()
