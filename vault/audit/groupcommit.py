"""The group commit of the audit log, and of the node's audit writer.

Callers hand in an item and wait on the future :meth:`GroupCommit.submit` returns; one
task waits for the first pending item, holds briefly to gather more (:meth:`_gather`),
commits every pending item as one batch (``commit(items)``, in the order they came)
and resolves each waiter's future with the commit's result, or with its exception
(every waiter of that batch, the same exception). A waiter cancelled meanwhile cancels
only its own future: its item stays pending and is committed all the same.

Two users, two items: :class:`~vault.audit.service.AuditLog` (one entry per read of this
process) and :class:`~vault.audit.node.WriterServer` (one frame of entries per serving
process, at most one in flight per connection, hence ``most``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

#: the longest a group commit is held for callers expected back (see GroupCommit._gather)
GATHER_MAX_SECONDS = 0.002

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, commit: Callable[[list[T]], Awaitable[R]], *, most: Callable[[], int] | None = None) -> None:
        """``most``: the most items the next commit can expect (None: no bound)."""
        self._commit = commit
        self._most = most
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.commit_seconds = 0.0  # moving average of a commit's duration
        self._gathered: asyncio.Event | None = None  # set when the commit being held has its items
        self._expected = 0

    def start(self, *, name: str) -> None:
        self._task = asyncio.create_task(self._run(), name=name)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item`` for the next commit; the future is its outcome (after :meth:`start`)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._futures.append(future)
        self._wakeup.set()
        if self._gathered is not None and len(self._items) >= self._expected:
            self._gathered.set()
        return future

    async def drain(self) -> None:
        """Commit and answer everything pending, items submitted meanwhile included, with no
        hold; then the task ends."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def abort(self) -> None:
        """Cancel the task at once (a commit in flight is cancelled with it), then commit
        what is still pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._items:  # never drop an item on shutdown
            await self._commit_batch()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._stopping and self._expected > len(self._items) and self.commit_seconds > 0:
                await self._gather()
            count = len(self._items)
            if count:
                started = time.perf_counter()
                await self._commit_batch()
                spent = time.perf_counter() - started
                self.commit_seconds = 0.8 * self.commit_seconds + 0.2 * spent if self.commit_seconds else spent
            # What the next commit is held for: the items that came meanwhile, and the
            # callers just released, most of whom submit again at once.
            self._expected = len(self._items) + count
            if self._most is not None:
                self._expected = min(self._expected, self._most())
            if self._stopping and not self._items:
                return

    async def _gather(self) -> None:
        """Hold the next commit briefly while the callers just released come back, as
        PostgreSQL's ``commit_delay`` does. Without it, under steady load the items of a
        commit are only those that arrived while the previous one was in flight: the
        callers it released arrive just after the next batch has left, so clients split
        into two halves that alternate, each waiting for two commits per read. Holding it
        at most half a commit's time (:data:`GATHER_MAX_SECONDS` at most) until as many
        items are pending as were pending at the last commit's end plus those it released
        lets one commit carry them all. A lone caller never waits: its own next item
        completes the count."""
        delay = min(self.commit_seconds / 2, GATHER_MAX_SECONDS)
        gathered = self._gathered = asyncio.Event()
        try:
            await asyncio.wait_for(gathered.wait(), delay)
        except TimeoutError:
            pass
        finally:
            self._gathered = None

    async def _commit_batch(self) -> None:
        items, self._items = self._items, []
        futures, self._futures = self._futures, []
        try:
            result = await self._commit(items)
        except Exception as exc:  # the batch's waiters fail; nothing is claimed written
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future in futures:
            if not future.done():
                future.set_result(result)
