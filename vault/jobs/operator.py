"""Operator actions on dead jobs (``vault jobs retry|discard JOB_ID``).

Only a ``dead`` job is touched: its kind's dead path (``on_dead``) already ran when it
died, so a retry queues it again from attempt 0 (the handler is idempotent; a dead path
that undid its work, such as a failed video's shredded source, may make it fail again),
and a discard deletes the row (the dead path is not run twice)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, update

from vault.db import Database, rowcount, utcnow
from vault.errors import Conflict, NotFound
from vault.jobs.models import DEAD, QUEUED, Job


@dataclass(frozen=True)
class DeadJobAction:
    id: str
    kind: str
    attempts: int
    last_error: str | None
    tenant_id: str | None  # from the payload, for the audit entry


async def _dead(db: Database, job_id: str) -> Job:
    async with db.session() as session:
        job = await session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.state != DEAD:
        raise Conflict(f"job {job_id} is {job.state}, not dead: only dead jobs can be retried or discarded")
    return job


def _action(job: Job) -> DeadJobAction:
    try:
        payload: Any = json.loads(job.payload)
    except ValueError:
        payload = {}
    tenant = payload.get("tenant_id") if isinstance(payload, dict) else None
    return DeadJobAction(job.id, job.kind, job.attempts, job.last_error, tenant if isinstance(tenant, str) else None)


async def retry_dead(db: Database, job_id: str) -> DeadJobAction:
    job = await _dead(db, job_id)
    async with db.transaction() as session:
        result = await session.execute(
            update(Job).where(Job.id == job_id, Job.state == DEAD)
            .values(state=QUEUED, attempts=0, run_at=utcnow(), lease_until=None, finished_at=None, worker=None))
    if rowcount(result) != 1:
        raise Conflict(f"job {job_id} changed meanwhile")
    return _action(job)


async def discard_dead(db: Database, job_id: str) -> DeadJobAction:
    job = await _dead(db, job_id)
    async with db.transaction() as session:
        result = await session.execute(delete(Job).where(Job.id == job_id, Job.state == DEAD))
    if rowcount(result) != 1:
        raise Conflict(f"job {job_id} changed meanwhile")
    return _action(job)
