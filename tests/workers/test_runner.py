"""The worker loop in-process against a real database: retries and the dead state,
time limits, fencing after a lost lease, heartbeats, graceful stop, periodic jobs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.workers.effects import effects, eventually, record_effect
from vault.db import Database, utcnow
from vault.jobs import DEAD, DONE, QUEUED, RUNNING, Job, enqueue
from vault.jobs.queue import claim
from workers.context import JobContext
from workers.registry import Backoff, Registry, nothing_to_undo
from workers.runner import Worker

FAST = Backoff(base=timedelta(milliseconds=20), cap=timedelta(milliseconds=50))
TEST = nothing_to_undo("a test job leaves nothing to repair")


def worker(rt, registry: Registry, *, lease: float = 30.0, concurrency: int = 2, grace: float = 5.0) -> Worker:
    return Worker(
        rt, registry, concurrency=concurrency, lease=timedelta(seconds=lease), poll_interval=0.02,
        shutdown_grace=grace, name=f"in-process-{lease}",
    )


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)


async def add(db: Database, kind: str, payload: dict | None = None, **options) -> str:
    async with db.transaction() as session:
        return await enqueue(session, kind, payload or {"key": "k1"}, **options)


async def job_row(db: Database, job_id: str) -> Job:
    async with db.session() as session:
        return (await session.execute(select(Job).where(Job.id == job_id))).scalar_one()


async def in_state(db: Database, job_id: str, *states: str) -> Job | None:
    row = await job_row(db, job_id)
    return row if row.state in states else None


async def test_a_failing_job_is_retried_then_dead_with_its_error(rt):
    registry, calls = Registry(), []

    @registry.job("test.fail", on_dead=TEST, max_attempts=3, backoff=FAST)
    async def always_fails(ctx: JobContext, payload: dict) -> None:
        calls.append(ctx.attempt)
        raise ValueError("could not read frame\n" + "7" * 1000)

    job_id = await add(rt.db, "test.fail")
    async with running(worker(rt, registry)):
        row = await eventually(lambda: in_state(rt.db, job_id, DEAD))
    assert calls == [1, 2, 3]
    assert row.attempts == 3
    assert row.last_error.startswith("ValueError: could not read frame 777")
    assert len(row.last_error) <= len("ValueError: ") + 200


async def test_no_retry_errors_go_dead_at_once(rt):
    registry, calls = Registry(), []

    class Corrupt(Exception):
        pass

    @registry.job("test.corrupt", on_dead=TEST, max_attempts=5, backoff=FAST, no_retry=(Corrupt,))
    async def corrupt(ctx: JobContext, payload: dict) -> None:
        calls.append(ctx.attempt)
        raise Corrupt("not a video")

    job_id = await add(rt.db, "test.corrupt")
    async with running(worker(rt, registry)):
        row = await eventually(lambda: in_state(rt.db, job_id, DEAD))
    assert (calls, row.attempts, row.last_error) == ([1], 1, "Corrupt: not a video")


async def test_a_job_over_its_time_limit_is_cancelled(rt):
    registry, cancelled = Registry(), asyncio.Event()

    @registry.job("test.hang", on_dead=TEST, time_limit=timedelta(milliseconds=200), max_attempts=1)
    async def hang(ctx: JobContext, payload: dict) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job_id = await add(rt.db, "test.hang")
    async with running(worker(rt, registry)):
        row = await eventually(lambda: in_state(rt.db, job_id, DEAD))
    assert cancelled.is_set()
    assert row.last_error == "JobTimeout: exceeded its time limit of 0.2s"


async def test_only_committed_jobs_run_and_their_effect_commits_once(rt):
    registry = Registry()

    @registry.job("test.effect", on_dead=TEST)
    async def effect(ctx: JobContext, payload: dict) -> None:
        async with ctx.transaction() as session:
            await record_effect(session, payload["key"], attempt=ctx.attempt)

    with pytest.raises(RuntimeError):
        async with rt.db.transaction() as session:
            await enqueue(session, "test.effect", {"key": "rolled-back"})
            raise RuntimeError("the upload failed after enqueueing")
    committed = await add(rt.db, "test.effect", {"key": "committed"})
    async with running(worker(rt, registry)):
        await eventually(lambda: in_state(rt.db, committed, DONE))
        await asyncio.sleep(0.2)  # a few more polls: nothing else may turn up
    assert [key for key, _, _ in await effects(rt.db)] == ["committed"]


async def test_a_worker_that_lost_its_lease_cannot_complete(rt):
    registry, proceed, outcome = Registry(), asyncio.Event(), []

    @registry.job("test.stalled", on_dead=TEST)
    async def stalled(ctx: JobContext, payload: dict) -> None:
        await proceed.wait()  # e.g. a long GC pause or a partition, longer than the lease
        try:
            async with ctx.transaction() as session:
                await record_effect(session, "stale", attempt=ctx.attempt)
        except Exception as exc:
            outcome.append(type(exc).__name__)
            raise

    job_id = await add(rt.db, "test.stalled")
    async with running(worker(rt, registry, lease=60)):
        await eventually(lambda: in_state(rt.db, job_id, RUNNING))
        # Another worker finds the lease expired (its clock is past it) and takes the job.
        [stolen] = await claim(rt.db, kinds=["test.stalled"], limit=1, lease=timedelta(hours=1), worker="thief",
                               now=utcnow() + timedelta(minutes=5))
        proceed.set()

        async def settled() -> list[str]:
            return outcome

        await eventually(settled)
    assert outcome == ["LeaseLost"]
    assert await effects(rt.db) == []
    row = await job_row(rt.db, job_id)
    assert (row.state, row.worker, row.fence, row.last_error) == (RUNNING, "thief", stolen.fence, None)


async def test_heartbeat_notices_a_lost_lease_and_cancels_the_handler(rt):
    registry, cancelled = Registry(), asyncio.Event()

    @registry.job("test.long", on_dead=TEST)
    async def long(ctx: JobContext, payload: dict) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job_id = await add(rt.db, "test.long")
    async with running(worker(rt, registry, lease=1)):
        await eventually(lambda: in_state(rt.db, job_id, RUNNING))
        await claim(rt.db, kinds=["test.long"], limit=1, lease=timedelta(hours=1), worker="thief",
                    now=utcnow() + timedelta(minutes=5))
        await asyncio.wait_for(cancelled.wait(), 5)
    assert (await job_row(rt.db, job_id)).worker == "thief"


async def test_heartbeats_keep_a_long_job_from_being_taken_twice(rt):
    registry = Registry()

    @registry.job("test.video", on_dead=TEST)
    async def video(ctx: JobContext, payload: dict) -> None:
        await asyncio.sleep(3.0)  # two leases
        async with ctx.transaction() as session:
            await record_effect(session, payload["key"], attempt=ctx.attempt)

    job_id = await add(rt.db, "test.video", {"key": "video"})
    async with running(worker(rt, registry, lease=1.5)):
        await eventually(lambda: in_state(rt.db, job_id, RUNNING))
        stolen = []
        while (await job_row(rt.db, job_id)).state == RUNNING:
            stolen += await claim(rt.db, kinds=["test.video"], limit=1, lease=timedelta(seconds=1), worker="thief")
            await asyncio.sleep(0.1)
    assert stolen == []
    assert await effects(rt.db) == [("video", os.getpid(), 1)]
    assert (await job_row(rt.db, job_id)).attempts == 1


async def test_stopping_hands_running_jobs_back(rt):
    registry, started = Registry(), asyncio.Event()

    @registry.job("test.block", on_dead=TEST)
    async def block(ctx: JobContext, payload: dict) -> None:
        started.set()
        await asyncio.sleep(60)

    job_id = await add(rt.db, "test.block")
    async with running(worker(rt, registry, grace=0.1)):
        await asyncio.wait_for(started.wait(), 5)
    row = await job_row(rt.db, job_id)
    assert (row.state, row.attempts, row.lease_until) == (QUEUED, 0, None)


async def test_complete_in_a_session_the_handler_owns(rt):
    registry = Registry()

    @registry.job("test.service", on_dead=TEST)
    async def through_a_service(ctx: JobContext, payload: dict) -> None:
        async with ctx.db.transaction() as session:  # as a domain service would open it
            await record_effect(session, payload["key"], attempt=ctx.attempt)
            await ctx.complete_in(session)

    job_id = await add(rt.db, "test.service", {"key": "svc"})
    async with running(worker(rt, registry)):
        row = await eventually(lambda: in_state(rt.db, job_id, DONE, DEAD))
    assert (row.state, row.last_error) == (DONE, None)
    assert [key for key, _, _ in await effects(rt.db)] == ["svc"]


async def test_a_worker_lost_on_the_last_attempt_leaves_the_job_dead(rt):
    registry, calls = Registry(), []

    @registry.job("test.oom", on_dead=TEST, max_attempts=2)
    async def oom(ctx: JobContext, payload: dict) -> None:
        calls.append(ctx.attempt)

    job_id = await add(rt.db, "test.oom")
    # Two workers died holding it (their leases expired); the next claim is attempt 3.
    async with rt.db.transaction() as session:
        await session.execute(update(Job).where(Job.id == job_id).values(
            state=RUNNING, attempts=2, fence=2, lease_until=utcnow() - timedelta(seconds=1)))
    async with running(worker(rt, registry)):
        row = await eventually(lambda: in_state(rt.db, job_id, DEAD))
    assert calls == []
    assert row.last_error == "WorkerLost: the lease of the last attempt expired"


async def test_periodic_jobs_run_once_per_period_across_workers(rt):
    registry, runs = Registry(), []

    @registry.periodic("test.sweep", on_dead=TEST, every=timedelta(hours=1))
    async def sweep(ctx: JobContext, payload: dict) -> None:
        runs.append(payload["period_start"])

    async def ran() -> list[str]:
        return runs

    async with running(worker(rt, registry), worker(rt, registry), worker(rt, registry)):
        await eventually(ran)
        await asyncio.sleep(0.3)  # the other workers' first ticks have passed too
    assert len(runs) == 1


def test_registry_checks_options():
    registry = Registry()

    async def handler(ctx, payload) -> None:
        pass

    async def other(ctx, payload) -> None:
        pass

    registry.job("test.ok", on_dead=TEST)(handler)
    with pytest.raises(ValueError, match="registered twice"):
        registry.job("test.ok", on_dead=TEST)(other)
    with pytest.raises(TypeError, match="async"):
        registry.job("test.sync", on_dead=TEST)(lambda ctx, payload: None)
    with pytest.raises(ValueError, match="max_attempts"):
        registry.job("test.zero", on_dead=TEST, max_attempts=0)(handler)
    with pytest.raises(ValueError, match="time_limit"):
        registry.job("test.instant", on_dead=TEST, time_limit=timedelta(0))(handler)
    registry.periodic("test.hourly", on_dead=TEST, every=timedelta(hours=1))(handler)
    assert registry.kinds == ("test.hourly", "test.ok")
    assert registry.schedule == {"test.hourly": timedelta(hours=1)}


def test_backoff_doubles_up_to_its_cap_with_jitter():
    backoff = Backoff(base=timedelta(seconds=10), cap=timedelta(minutes=5))
    assert backoff.delay(1, rng=lambda: 0.0) == timedelta(seconds=5)
    assert backoff.delay(1, rng=lambda: 1.0) == timedelta(seconds=10)
    assert backoff.delay(3, rng=lambda: 1.0) == timedelta(seconds=40)
    assert backoff.delay(30, rng=lambda: 1.0) == timedelta(minutes=5)
    assert backoff.delay(30, rng=lambda: 0.0) == timedelta(minutes=2, seconds=30)
    with pytest.raises(ValueError):
        Backoff(base=timedelta(minutes=10), cap=timedelta(minutes=5))
