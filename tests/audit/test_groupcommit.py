"""vault.audit.groupcommit.GroupCommit, the group commit of AuditLog and of the node's audit
writer, with a commit function of the test's own that records each batch. Through the
real writers: test_audit_chain.py and test_node_writer.py."""

from __future__ import annotations

import asyncio

from vault.audit.groupcommit import GroupCommit


class Batches:
    """A commit function: records each batch; fails a batch holding "bad"; waits on
    ``gate`` while it is cleared."""

    def __init__(self) -> None:
        self.committed: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: list[str]) -> int:
        self.entered.set()
        await self.gate.wait()
        if "bad" in items:
            raise LookupError("a batch that cannot be committed")
        self.committed.append(list(items))
        return len(items)


async def test_each_waiter_gets_its_batch_result_and_a_failure_fails_exactly_its_batch():
    batches = Batches()
    group: GroupCommit[str, int] = GroupCommit(batches)
    group.start(name="test group commit")
    try:
        first = [group.submit(item) for item in ("a", "b", "c")]
        assert await asyncio.gather(*first) == [3, 3, 3]
        failing = [group.submit(item) for item in ("d", "bad")]
        results = await asyncio.gather(*failing, return_exceptions=True)
        assert all(isinstance(r, LookupError) for r in results) and results[0] is results[1]
        assert await group.submit("e") == 1  # the next batch is committed
    finally:
        await group.drain()
    assert batches.committed == [["a", "b", "c"], ["e"]]


async def test_a_cancelled_waiter_s_item_is_committed_all_the_same():
    batches = Batches()
    group: GroupCommit[str, int] = GroupCommit(batches)
    group.start(name="test group commit")
    try:
        batches.gate.clear()
        held = group.submit("held")
        await batches.entered.wait()  # a commit in flight: what comes now waits for the next
        waiters = [asyncio.ensure_future(group.submit(item)) for item in ("x", "y")]
        await asyncio.sleep(0)
        waiters[0].cancel()
        batches.gate.set()
        assert await held == 1
        assert await waiters[1] == 2
        assert waiters[0].cancelled()
    finally:
        await group.drain()
    assert batches.committed == [["held"], ["x", "y"]]


async def test_drain_commits_what_comes_while_a_commit_is_in_flight_then_ends():
    batches = Batches()
    group: GroupCommit[str, int] = GroupCommit(batches, most=lambda: 1)
    group.start(name="test group commit")
    batches.gate.clear()
    first = group.submit("first")
    await batches.entered.wait()
    draining = asyncio.ensure_future(group.drain())
    await asyncio.sleep(0)
    late = group.submit("late")  # during the drain, before the loop ended: still committed
    batches.gate.set()
    await draining
    assert (await first, await late) == (1, 1)
    assert not group.running
    assert batches.committed == [["first"], ["late"]]


async def test_abort_cancels_the_commit_in_flight_and_commits_what_is_pending():
    batches = Batches()
    group: GroupCommit[str, int] = GroupCommit(batches)
    group.start(name="test group commit")
    batches.gate.clear()
    in_flight = group.submit("in flight")
    await batches.entered.wait()
    pending = group.submit("pending")
    aborting = asyncio.ensure_future(group.abort())
    await asyncio.sleep(0)  # the task is cancelled in its commit; the pending item is committed next
    batches.gate.set()
    await aborting
    assert await pending == 1
    assert batches.committed == [["pending"]]  # the cancelled commit wrote nothing
    in_flight.cancel()
