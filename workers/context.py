"""What a handler gets besides its payload: the runtime and the fenced final transaction.

A handler's database effect and the job's completion commit together::

    async def process(ctx: JobContext, payload: dict) -> None:
        data = await compute(...)                    # may run again after a crash
        async with ctx.transaction() as session:     # last step: effect + "done", atomically
            session.add(Thing(...))

Entering ``ctx.transaction()`` marks the job done with ``UPDATE ... WHERE fence = ?``
first; when the lease was lost to another worker it raises
:class:`vault.jobs.LeaseLost` and nothing in the block commits. When a domain
service owns the session, call ``await ctx.complete_in(session)`` as the last
statement of that session's transaction instead. A handler that commits nothing
(its effects live outside the database and are idempotent) simply returns; the
runner then completes the job in a transaction of its own, with the same fence check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from vault.config import Settings
from vault.db import Database
from vault.jobs.queue import complete
from vault.runtime import Runtime


@dataclass(kw_only=True)
class JobContext:
    job_id: str
    kind: str
    attempt: int  # 1 for the first run
    max_attempts: int
    fence: int
    runtime: Runtime
    completed: bool = field(default=False, init=False)
    # Set while the final transaction is open: the heartbeat then stands aside, since
    # the fenced UPDATE already holds the job (a row lock on PostgreSQL, the one
    # writer on SQLite) and a lease extension would only wait for it.
    finishing: bool = field(default=False, init=False)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def db(self) -> Database:
        return self.runtime.db

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """The handler's final write transaction, fenced; see the module docstring."""
        if self.completed:
            raise RuntimeError("the job's final transaction has already committed")
        self.finishing = True
        try:
            async with self.db.transaction() as session:
                await complete(session, self.job_id, self.fence)
                yield session
        except BaseException:
            self.finishing = False
            raise
        self.completed = True

    async def complete_in(self, session: AsyncSession) -> None:
        """Mark the job done in a transaction the caller owns (raises ``LeaseLost``).
        Call it last: the job counts as finished once that transaction commits."""
        self.finishing = True
        await complete(session, self.job_id, self.fence)


@dataclass(kw_only=True)
class DeadJobContext:
    """What a kind's ``on_dead`` handler gets: the job is dead already, so its
    transactions complete nothing (no fence to check) and it counts as the last attempt.
    Domain code written against :class:`JobContext` (``ctx.transaction()``,
    ``ctx.runtime``, ``ctx.last_attempt``) runs unchanged."""

    job_id: str
    kind: str
    error: str  # the dead job's last error: "<ExceptionType>: <message start>"
    runtime: Runtime
    last_attempt: bool = field(default=True, init=False)
    completed: bool = field(default=False, init=False)

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def db(self) -> Database:
        return self.runtime.db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.db.transaction() as session:
            yield session

    async def complete_in(self, session: AsyncSession) -> None:
        """Nothing to complete: the job is dead already."""
