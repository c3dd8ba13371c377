"""The job table and the schedule of periodic jobs.

A job is a row: ``queued`` until ``run_at``, ``running`` while a worker holds its
lease, then ``done`` or ``dead``. A running job whose lease expired (its worker
died) is claimable again; every claim bumps ``fence``, and completion is an
``UPDATE ... WHERE id = ? AND fence = ?``, so only the newest claimant can commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow

QUEUED, RUNNING, DONE, DEAD = "queued", "running", "done", "dead"
STATES = (QUEUED, RUNNING, DONE, DEAD)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # Serves the claim (queued by run_at, running by expired lease) and the counts per state.
        Index("ix_jobs_state_run_at", "state", "run_at"),
        CheckConstraint("state IN ('queued', 'running', 'done', 'dead')", name="state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(100))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON of ids, never personal data
    state: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int | None] = mapped_column(Integer)  # None: the kind's default
    fence: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(100))
    # At most one job per key while its row exists (periodic runs, "once per object" jobs).
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    last_error: Mapped[str | None] = mapped_column(String(300))  # exception type and a truncated message
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobSchedule(Base):
    """When each periodic job kind is next due. Workers advance it with a
    compare-and-set, so with many workers each period is enqueued once."""

    __tablename__ = "job_schedules"

    kind: Mapped[str] = mapped_column(String(100), primary_key=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WorkerHeartbeat(Base):
    """One row per running worker (a ``vault worker`` process or the worker inside
    ``vault serve``), touched every few seconds. Readiness reports a missing or stale
    heartbeat as *degraded*: jobs wait, but requests still succeed."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kinds: Mapped[int] = mapped_column(Integer, default=0)  # job kinds it runs
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
