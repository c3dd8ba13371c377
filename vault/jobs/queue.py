"""The durable job queue: a table in the metadata database.

``enqueue`` writes a row in the caller's own session, so the job commits or rolls
back with the change that needs it. Workers ``claim`` jobs in a short write
transaction — ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the write
transaction is ``BEGIN IMMEDIATE``, so claims are serialised by the database — and
hold a lease that they ``extend_lease`` while the handler runs. Every claim bumps the
job's fence; ``complete``, ``fail`` and ``release`` only touch the row when the fence
still matches, so a worker that lost its lease cannot commit a result.

Times are the workers' clocks (UTC): keep them synchronised (NTP), and leases far
longer than any skew.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from vault.db import Database, new_id, rowcount, utcnow
from vault.errors import Conflict
from vault.jobs.models import DEAD, DONE, QUEUED, RUNNING, STATES, Job

jobs = cast(Table, Job.__table__)

_KIND = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
MAX_PAYLOAD_BYTES = 4096
MAX_PAYLOAD_STRING = 200
ERROR_CHARS = 300


class LeaseLost(Conflict):
    """The job was claimed again (its lease expired): this worker's result must not commit."""

    code, default_message = "lease_lost", "the job's lease was lost to another worker"


@dataclass(frozen=True, kw_only=True)
class ClaimedJob:
    id: str
    kind: str
    payload: dict[str, Any]
    attempts: int  # including this one
    max_attempts: int | None  # None: the kind's default
    fence: int
    lease_until: datetime


@dataclass(frozen=True, kw_only=True)
class DeadJob:
    id: str
    kind: str
    attempts: int
    finished_at: datetime | None
    last_error: str | None


# -- enqueue ---------------------------------------------------------------------------
async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: Mapping[str, Any],
    *,
    run_at: datetime | None = None,
    dedupe_key: str | None = None,
    max_attempts: int | None = None,
) -> str:
    """Add a job in the caller's transaction and return its id.

    The payload holds ids and small flags only (never personal data): a JSON object
    of strings, numbers, booleans, nulls or lists of those. With ``dedupe_key``, a job
    whose row already has that key is not added again; its id is returned.
    """
    if not _KIND.match(kind):
        raise ValueError("a job kind is 1-100 lowercase letters, digits, '.', '_' or '-'")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    row: dict[str, Any] = {
        "id": new_id(),
        "kind": kind,
        "payload": encode_payload(payload),
        "state": QUEUED,
        "attempts": 0,
        "max_attempts": max_attempts,
        "fence": 0,
        "run_at": run_at or utcnow(),
        "dedupe_key": dedupe_key,
        "created_at": utcnow(),
    }
    if dedupe_key is None:
        await session.execute(jobs.insert().values(row))
        return row["id"]
    inserted = (await session.execute(_insert_ignoring_conflicts(session).values(row).returning(jobs.c.id))).scalar()
    if inserted is not None:
        return inserted
    return (await session.execute(select(jobs.c.id).where(jobs.c.dedupe_key == dedupe_key))).scalar_one()


def _insert_ignoring_conflicts(session: AsyncSession):
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(jobs).on_conflict_do_nothing(index_elements=["dedupe_key"])


def encode_payload(payload: Mapping[str, Any]) -> str:
    if not isinstance(payload, Mapping):
        raise TypeError("a job payload is a mapping of ids")
    for key, value in payload.items():
        if not isinstance(key, str):
            raise TypeError("job payload keys are strings")
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not isinstance(item, (str, int, float, bool)):
                raise TypeError("job payload values are ids, numbers, booleans or lists of them")
            if isinstance(item, str) and len(item) > MAX_PAYLOAD_STRING:
                raise ValueError("job payload strings are ids, at most 200 characters")
    encoded = json.dumps(dict(payload), sort_keys=True, separators=(",", ":"))
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise ValueError("a job payload holds ids only and is at most 4 KiB")
    return encoded


# -- claim, lease, finish --------------------------------------------------------------
def _claimable(kinds: Iterable[str], now: datetime):
    return and_(
        jobs.c.kind.in_(list(kinds)),
        or_(
            and_(jobs.c.state == QUEUED, jobs.c.run_at <= now),
            and_(jobs.c.state == RUNNING, jobs.c.lease_until < now),
        ),
    )


async def claim(
    db: Database,
    *,
    kinds: Iterable[str],
    limit: int,
    lease: timedelta,
    worker: str,
    now: datetime | None = None,
    peek: bool = True,
) -> list[ClaimedJob]:
    """Take up to ``limit`` due jobs of the given kinds (oldest ``run_at`` first),
    including running jobs whose lease expired. ``peek=False`` skips SQLite's
    read-only look first (for when the last claim found a backlog)."""
    kinds = list(kinds)
    if not kinds or limit < 1:
        return []
    now = now or utcnow()
    if peek and db.dialect == "sqlite":
        # An idle poll must not take SQLite's one write lock away from the API.
        async with db.session() as session:
            if (await session.execute(select(jobs.c.id).where(_claimable(kinds, now)).limit(1))).first() is None:
                return []
    # SKIP LOCKED: concurrent claimers on PostgreSQL pass over each other's rows
    # instead of queueing; SQLite renders no FOR UPDATE (BEGIN IMMEDIATE serialises).
    pick = (
        select(jobs.c.id)
        .where(_claimable(kinds, now))
        .order_by(jobs.c.run_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    lease_until = now + lease
    stmt = (
        update(jobs)
        .where(jobs.c.id.in_(pick.scalar_subquery()))
        .values(
            state=RUNNING,
            attempts=jobs.c.attempts + 1,
            fence=jobs.c.fence + 1,
            lease_until=lease_until,
            worker=worker[:100],
        )
        .returning(jobs.c.id, jobs.c.kind, jobs.c.payload, jobs.c.attempts, jobs.c.max_attempts, jobs.c.fence)
    )
    async with db.transaction() as session:
        rows = (await session.execute(stmt)).all()
    return [
        ClaimedJob(
            id=row.id,
            kind=row.kind,
            payload=json.loads(row.payload),
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            fence=row.fence,
            lease_until=lease_until,
        )
        for row in rows
    ]


def _held(job_id: str, fence: int):
    return and_(jobs.c.id == job_id, jobs.c.fence == fence, jobs.c.state == RUNNING)


async def extend_lease(db: Database, job_id: str, fence: int, *, lease: timedelta) -> bool:
    """Push the lease forward; False when this claim no longer holds the job."""
    async with db.transaction() as session:
        result = await session.execute(update(jobs).where(_held(job_id, fence)).values(lease_until=utcnow() + lease))
    return rowcount(result) == 1


async def complete(session: AsyncSession, job_id: str, fence: int) -> None:
    """Mark the job done inside ``session``; raise :class:`LeaseLost` (so the caller's
    transaction rolls back) unless this claim still holds it.

    On PostgreSQL the UPDATE locks the row until the caller commits, so no claim can
    slip in between the check and the commit; SQLite has one writer at a time.
    Completing twice under the same fence (same transaction) is a no-op.
    """
    result = await session.execute(
        update(jobs).where(_held(job_id, fence)).values(state=DONE, finished_at=utcnow(), lease_until=None)
    )
    if rowcount(result) == 1:
        return
    row = (await session.execute(select(jobs.c.state, jobs.c.fence).where(jobs.c.id == job_id))).first()
    if row is None or (row.state, row.fence) != (DONE, fence):
        raise LeaseLost()


async def fail(db: Database, job_id: str, fence: int, *, error: str, retry_at: datetime | None) -> bool:
    """Record a failed attempt: queued again at ``retry_at``, or ``dead`` when it is
    None. False when this claim no longer holds the job (nothing is changed)."""
    values: dict[str, Any] = {"last_error": error[:ERROR_CHARS], "lease_until": None}
    if retry_at is None:
        values.update(state=DEAD, finished_at=utcnow())
    else:
        values.update(state=QUEUED, run_at=retry_at)
    async with db.transaction() as session:
        result = await session.execute(update(jobs).where(_held(job_id, fence)).values(values))
    return rowcount(result) == 1


async def release(db: Database, job_id: str, fence: int) -> bool:
    """Hand a job back unfinished (the worker is shutting down); the interrupted
    attempt does not count."""
    async with db.transaction() as session:
        result = await session.execute(
            update(jobs)
            .where(_held(job_id, fence))
            .values(state=QUEUED, run_at=utcnow(), lease_until=None, attempts=jobs.c.attempts - 1)
        )
    return rowcount(result) == 1


def describe_error(exc: BaseException) -> str:
    """The exception type and the start of its message, on one line. Handlers raise
    the vault's own errors, whose messages never hold patient data; the truncation
    bounds what any other message can leak into the table."""
    message = " ".join(str(exc).split())[:200]
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


# -- operators --------------------------------------------------------------------------
async def stats(session: AsyncSession) -> dict[str, int]:
    """The number of jobs in each state (every state present)."""
    counts = dict.fromkeys(STATES, 0)
    for state, count in await session.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)):
        counts[state] = count
    return counts


async def stats_by_kind(session: AsyncSession) -> dict[str, dict[str, int]]:
    rows = await session.execute(
        select(jobs.c.kind, jobs.c.state, func.count()).group_by(jobs.c.kind, jobs.c.state).order_by(jobs.c.kind)
    )
    result: dict[str, dict[str, int]] = {}
    for kind, state, count in rows:
        result.setdefault(kind, dict.fromkeys(STATES, 0))[state] = count
    return result


async def recent_dead(session: AsyncSession, *, limit: int = 10) -> list[DeadJob]:
    rows = await session.execute(
        select(jobs.c.id, jobs.c.kind, jobs.c.attempts, jobs.c.finished_at, jobs.c.last_error)
        .where(jobs.c.state == DEAD)
        .order_by(jobs.c.finished_at.desc())
        .limit(limit)
    )
    return [DeadJob(id=r.id, kind=r.kind, attempts=r.attempts, finished_at=r.finished_at, last_error=r.last_error) for r in rows]


async def prune(db: Database, *, done_before: datetime) -> int:
    """Delete ``done`` jobs finished before the cut-off (dead ones stay for operators)."""
    async with db.transaction() as session:
        result = await session.execute(delete(jobs).where(jobs.c.state == DONE, jobs.c.finished_at < done_before))
    return rowcount(result)
