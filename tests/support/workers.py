"""Worker heartbeats in the shared test database."""

from __future__ import annotations

from sqlalchemy import delete

from vault.jobs.models import WorkerHeartbeat


async def no_live_workers(db) -> None:
    """Forget every worker heartbeat: the database is shared by the whole run, and a
    worker of an earlier test (one killed with -9 leaves its row) may look alive for
    up to the staleness bound."""
    async with db.transaction() as session:
        await session.execute(delete(WorkerHeartbeat))
