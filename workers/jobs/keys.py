"""Periodic key upkeep: KEK epochs (rotate, destroy old versions) and signed audit checkpoints."""

from __future__ import annotations

import logging
from datetime import timedelta

from vault.audit.checkpoints import checkpoint_all
from vault.db import utcnow
from vault.errors import VaultError
from vault.keyops import rotate_and_expire
from workers.context import JobContext
from workers.registry import periodic

log = logging.getLogger("vault.worker.keys")


# Hourly, though rotation is measured in days: the period is the slack between a KEK
# version passing the backup window and its destruction, which receipts promise.
@periodic("keys.rotate", every=timedelta(hours=1), time_limit=timedelta(minutes=30))
async def rotate_keys(ctx: JobContext, payload: dict) -> None:
    """Rotate each tenant's KEK when due and destroy versions past the backup window.

    Idempotent: each step looks at the versions' ages and DEK counts before acting.
    """
    failed = 0
    for tenant in await ctx.runtime.tenants.tenants():
        try:
            await rotate_and_expire(ctx.runtime, tenant.id, now=utcnow(), request_id=f"job-{ctx.job_id}")
        except Exception:
            log.exception("KEK upkeep failed", extra={"tenant_id": tenant.id})
            failed += 1
    if failed:
        raise VaultError(f"KEK upkeep failed for {failed} tenant(s); see the log")


@periodic("audit.checkpoint", every=timedelta(hours=1), time_limit=timedelta(minutes=10))
async def checkpoint_audit(ctx: JobContext, payload: dict) -> None:
    """Sign every tenant's audit-chain head (skipped where it has not moved)."""
    await checkpoint_all(ctx.runtime)
