"""Periodic key upkeep: KEK epochs (rotate, destroy old versions), signed audit checkpoints,
and finishing the clean-up after shreds in both databases (WAL checkpoint / VACUUM)."""

from __future__ import annotations

import logging
from datetime import timedelta

from vault.audit.checkpoints import checkpoint_all
from vault.db import utcnow
from vault.errors import VaultError
from vault.keyops import JOB_PERIOD, KeyOperations, finish_epochs, rotate_and_expire
from workers.context import JobContext
from workers.registry import nothing_to_undo, periodic

log = logging.getLogger("vault.worker.keys")


# Hourly, though rotation is measured in days: the period is the slack between a KEK
# version passing the backup window and its destruction, which receipts promise.
@periodic("keys.rotate", every=JOB_PERIOD, time_limit=timedelta(minutes=30),
          on_dead=nothing_to_undo("each step re-reads the versions; the next period resumes a rotation"))
async def rotate_keys(ctx: JobContext, payload: dict) -> None:
    """Rotate each tenant's KEK when due and destroy versions past the backup window.

    Idempotent: each step looks at the versions' ages and DEK counts before acting.
    """
    rt = ctx.runtime
    ops = KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)
    failed = 0
    for tenant in await rt.tenants.tenants():
        try:
            await rotate_and_expire(ops, tenant.id, now=utcnow(), rotate_after=timedelta(days=rt.settings.kek_rotation_days),
                                    backup_window=timedelta(days=rt.settings.backup_window_days),
                                    request_id=f"job-{ctx.job_id}")
        except Exception:
            log.exception("KEK upkeep failed", extra={"tenant_id": tenant.id})
            failed += 1
    try:
        await finish_epochs(rt.keys, now=utcnow())
    except Exception:
        log.exception("finishing root-key destructions failed")
        failed += 1
    if failed:
        raise VaultError(f"KEK upkeep failed for {failed} tenant(s); see the log")


@periodic("audit.checkpoint", every=timedelta(hours=1), time_limit=timedelta(minutes=10),
          on_dead=nothing_to_undo("a checkpoint is one insert; the next period signs the head"))
async def checkpoint_audit(ctx: JobContext, payload: dict) -> None:
    """Sign every tenant's audit-chain head (skipped where it has not moved)."""
    rt = ctx.runtime
    await checkpoint_all(rt.checkpoints, [tenant.id for tenant in await rt.tenants.tenants()])


# Every 5 minutes: an erasure never waits on readers for its WAL checkpoints (a backup
# holding a snapshot would stall it and every writer behind it), so this finishes them
# once the reader has gone. Cheap when there is nothing to do.
@periodic("shred.checkpoint", every=timedelta(minutes=5), time_limit=timedelta(minutes=2),
          on_dead=nothing_to_undo("the rows are already deleted; the next period checkpoints again"))
async def finish_shreds(ctx: JobContext, payload: dict) -> None:
    """Remove the old page images of shredded keys and erased rows from both databases:
    key store (WAL checkpoint / VACUUM) and metadata (SQLite WAL checkpoint)."""
    keys_done = await ctx.runtime.keys.finish_shreds()
    metadata_done = await ctx.runtime.db.checkpoint()
    if not (keys_done and metadata_done):
        log.info("clean-up after a shred is still pending (a reader holds an older snapshot)")
