"""The queue's primitives on a real database: transactional enqueue, claims that never
overlap, leases and fencing, retries and the dead state, operators' counts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.support.cancel import cancel_inside
from vault.db import Database, utcnow
from vault.jobs import DEAD, DONE, QUEUED, RUNNING, Job, LeaseLost, enqueue
from vault.jobs.queue import (
    claim,
    complete,
    describe_error,
    extend_lease,
    fail,
    prune,
    recent_dead,
    release,
    stats,
    stats_by_kind,
)
from vault.jobs.report import job_report

LEASE = timedelta(seconds=30)


async def job_row(db: Database, job_id: str) -> Job:
    async with db.session() as session:
        return (await session.execute(select(Job).where(Job.id == job_id))).scalar_one()


async def add(db: Database, kind: str = "test.job", payload: dict | None = None, **options) -> str:
    async with db.transaction() as session:
        return await enqueue(session, kind, payload or {"media_id": "m1"}, **options)


async def test_job_commits_with_the_callers_transaction(db):
    job_id = await add(db, "media.process", {"media_id": "abc", "tenant_id": "t1"})
    [job] = await claim(db, kinds=["media.process"], limit=5, lease=LEASE, worker="w1")
    assert (job.id, job.kind, job.payload) == (job_id, "media.process", {"media_id": "abc", "tenant_id": "t1"})
    assert (job.attempts, job.fence) == (1, 1)
    row = await job_row(db, job_id)
    assert (row.state, row.worker) == (RUNNING, "w1")
    assert row.lease_until > utcnow() + LEASE - timedelta(seconds=5)


async def test_job_enqueued_in_a_rolled_back_transaction_never_exists(db):
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await enqueue(session, "test.job", {"media_id": "m1"})
            raise RuntimeError("the change that needed the job failed")
    assert await claim(db, kinds=["test.job"], limit=5, lease=LEASE, worker="w1") == []
    async with db.session() as session:
        assert await stats(session) == {QUEUED: 0, RUNNING: 0, DONE: 0, DEAD: 0}


async def test_claim_takes_only_due_jobs_of_known_kinds(db):
    later = await add(db, run_at=utcnow() + timedelta(hours=1))
    other = await add(db, "other.kind")
    due = await add(db)
    claimed = await claim(db, kinds=["test.job"], limit=10, lease=LEASE, worker="w1")
    assert [job.id for job in claimed] == [due]
    assert (await job_row(db, later)).state == QUEUED
    assert (await job_row(db, other)).state == QUEUED
    # Two hours on, the delayed job is due and the first claim's lease has expired.
    claimed = await claim(db, kinds=["test.job"], limit=10, lease=LEASE, worker="w1", now=utcnow() + timedelta(hours=2))
    assert {job.id for job in claimed} == {later, due}


async def test_dedupe_key_adds_a_job_once(db):
    first = await add(db, dedupe_key="video:m1")
    again = await add(db, dedupe_key="video:m1")
    assert first == again
    async with db.session() as session:
        assert (await stats(session))[QUEUED] == 1


@pytest.mark.parametrize(
    ("kind", "payload", "error"),
    [
        ("test.job", {"patient": {"name": "x"}}, TypeError),
        ("test.job", {"note": "x" * 201}, ValueError),
        ("test.job", {"ids": [f"{i:032d}" for i in range(200)]}, ValueError),
        ("Not A Kind", {"media_id": "m1"}, ValueError),
        ("test.job", ["m1"], TypeError),
    ],
)
async def test_payload_holds_ids_only(db, kind, payload, error):
    with pytest.raises(error):
        await add(db, kind, payload)
    async with db.session() as session:
        assert (await stats(session))[QUEUED] == 0


async def test_concurrent_claimers_never_take_the_same_job(db, jobs_database):
    async with db.transaction() as session:
        ids = [await enqueue(session, "test.job", {"n": n}) for n in range(200)]
    # Separate engines: separate connections (and on SQLite, separate writers).
    claimers = [Database(jobs_database.url) for _ in range(4)]

    async def drain(claimer: Database, worker: str) -> list[str]:
        taken: list[str] = []
        while batch := await claim(claimer, kinds=["test.job"], limit=7, lease=LEASE, worker=worker):
            taken += [job.id for job in batch]
        return taken

    try:
        results = await asyncio.gather(*(drain(c, f"w{i}") for i, c in enumerate(claimers * 2)))
    finally:
        for claimer in claimers:
            await claimer.close()
    taken = [job_id for result in results for job_id in result]
    assert len(taken) == len(set(taken)) == 200
    assert set(taken) == set(ids)
    assert sum(1 for result in results if result) > 1  # the claimers really interleaved


async def test_a_claim_cancelled_mid_statement_leaves_the_database_writable(db, jobs_database):
    """A task cancelled inside a write (a job's time limit) must not leave SQLite's write
    lock with the dropped connection; the cancelled task stays referenced, as a runner keeps it."""
    job_id = await add(db)
    with cancel_inside(lambda _conn, sql: sql.startswith("UPDATE jobs")) as cancelled:
        claiming = asyncio.create_task(claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1"))
        with pytest.raises(asyncio.CancelledError):
            await claiming
    assert cancelled == [claiming]
    other = Database(jobs_database.url)  # another connection, another node
    try:
        [job] = await claim(other, kinds=["test.job"], limit=1, lease=LEASE, worker="w2")
    finally:
        await other.close()
    assert (job.id, job.attempts) == (job_id, 1)  # the cancelled claim left nothing behind
    await add(db)  # and the first node writes again


async def test_expired_lease_is_claimed_again_and_the_old_claim_cannot_complete(db):
    job_id = await add(db)
    t0 = utcnow()
    [first] = await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1", now=t0)
    assert await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w2", now=t0 + LEASE / 2) == []
    [second] = await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w2", now=t0 + LEASE * 2)
    assert (second.id, second.attempts) == (job_id, 2)
    assert second.fence > first.fence

    # The first worker's final transaction (its effect plus "done") rolls back whole.
    with pytest.raises(LeaseLost):
        async with db.transaction() as session:
            await enqueue(session, "test.effect", {"media_id": "m1"})
            await complete(session, job_id, first.fence)
    assert not await extend_lease(db, job_id, first.fence, lease=LEASE)
    assert not await fail(db, job_id, first.fence, error="late", retry_at=None)
    assert await claim(db, kinds=["test.effect"], limit=1, lease=LEASE, worker="w1") == []

    assert await extend_lease(db, job_id, second.fence, lease=LEASE)
    async with db.transaction() as session:
        await complete(session, job_id, second.fence)
        await complete(session, job_id, second.fence)  # idempotent under the same fence
    row = await job_row(db, job_id)
    assert (row.state, row.worker, row.lease_until) == (DONE, "w2", None)
    assert row.finished_at is not None


async def test_failure_is_retried_at_its_time_then_dead_with_the_error(db):
    job_id = await add(db)
    [job] = await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1")
    retry_at = utcnow() + timedelta(minutes=5)
    assert await fail(db, job_id, job.fence, error="StorageUnavailable: storage is unavailable", retry_at=retry_at)
    row = await job_row(db, job_id)
    assert (row.state, row.attempts, row.last_error) == (QUEUED, 1, "StorageUnavailable: storage is unavailable")
    assert await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1") == []

    [job] = await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1", now=retry_at + timedelta(seconds=1))
    assert job.attempts == 2
    assert await fail(db, job_id, job.fence, error="ValueError: bad frame", retry_at=None)
    row = await job_row(db, job_id)
    assert (row.state, row.attempts, row.last_error) == (DEAD, 2, "ValueError: bad frame")
    assert await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1", now=utcnow() + timedelta(days=1)) == []


async def test_release_hands_back_without_spending_an_attempt(db):
    job_id = await add(db)
    [job] = await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w1")
    assert await release(db, job_id, job.fence)
    row = await job_row(db, job_id)
    assert (row.state, row.attempts, row.lease_until) == (QUEUED, 0, None)
    [again] = await claim(db, kinds=["test.job"], limit=1, lease=LEASE, worker="w2")
    assert (again.attempts, again.fence) == (1, job.fence + 1)


def test_error_summary_is_one_short_line():
    summary = describe_error(ValueError("line one\nline two " + "x" * 1000))
    assert summary.startswith("ValueError: line one line two xxx")
    assert "\n" not in summary and len(summary) <= len("ValueError: ") + 200
    assert describe_error(KeyError()) == "KeyError"


async def test_operators_see_counts_per_state_and_kind_and_dead_errors(db):
    dead_id = await add(db, "media.process")
    await add(db, "media.process")
    await add(db, "exports.build")
    [job] = await claim(db, kinds=["media.process"], limit=1, lease=LEASE, worker="w1")
    assert job.id == dead_id
    await fail(db, dead_id, job.fence, error="CorruptMedia: the media is damaged", retry_at=None)
    [running] = await claim(db, kinds=["exports.build"], limit=1, lease=LEASE, worker="w1")

    async with db.session() as session:
        assert await stats(session) == {QUEUED: 1, RUNNING: 1, DONE: 0, DEAD: 1}
        by_kind = await stats_by_kind(session)
        [dead] = await recent_dead(session)
    assert by_kind["media.process"] == {QUEUED: 1, RUNNING: 0, DONE: 0, DEAD: 1}
    assert by_kind["exports.build"] == {QUEUED: 0, RUNNING: 1, DONE: 0, DEAD: 0}
    assert (dead.id, dead.kind, dead.attempts, dead.last_error) == (dead_id, "media.process", 1, "CorruptMedia: the media is damaged")

    report = await job_report(db)
    assert "dead             1" in report
    assert f"{dead_id}  media.process  attempts 1" in report and "CorruptMedia: the media is damaged" in report
    assert running.id not in report  # only dead jobs are listed by id


async def test_prune_deletes_old_done_jobs_only(db):
    done_id, dead_id = await add(db), await add(db)
    [a, b] = await claim(db, kinds=["test.job"], limit=2, lease=LEASE, worker="w1")
    fences = {a.id: a.fence, b.id: b.fence}
    async with db.transaction() as session:
        await complete(session, done_id, fences[done_id])
    await fail(db, dead_id, fences[dead_id], error="ValueError", retry_at=None)
    assert await prune(db, done_before=utcnow() - timedelta(days=1)) == 0
    assert await prune(db, done_before=utcnow() + timedelta(seconds=1)) == 1
    async with db.session() as session:
        assert await stats(session) == {QUEUED: 0, RUNNING: 0, DONE: 0, DEAD: 1}
