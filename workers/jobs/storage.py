"""Storage upkeep: the leftover sweep (vault/leftovers/sweep.py, docs/storage.md)."""

from __future__ import annotations

from datetime import timedelta

from vault.leftovers.sweep import LeftoverSweep
from workers.context import JobContext
from workers.registry import nothing_to_undo, periodic

SWEEP_LEFTOVERS = "storage.sweep_leftovers"


@periodic(SWEEP_LEFTOVERS, every=lambda settings: timedelta(seconds=settings.leftover_sweep_seconds),
          time_limit=timedelta(hours=1),
          on_dead=nothing_to_undo("every step is idempotent; the next period sweeps what is left"))
async def sweep_leftovers(ctx: JobContext, payload: dict) -> None:
    """Remove partial writes, blobs and object keys with no row whose writer's lease
    expired more than ``VAULT_LEFTOVER_GRACE_SECONDS`` ago (keys shredded first)."""
    rt = ctx.runtime
    sweep = LeftoverSweep(db=rt.db, keys=rt.keys, store=rt.store, ledger=rt.ledger,
                          grace_seconds=rt.settings.leftover_grace_seconds)
    await sweep.run()
