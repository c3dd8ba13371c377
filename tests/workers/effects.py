"""A table the test jobs write their effect to. It has no unique constraint on
purpose: a job whose effect committed twice shows up as two rows."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from vault.db import Database

T = TypeVar("T")


async def reset_effects(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(
            text("CREATE TABLE IF NOT EXISTS job_effects (key VARCHAR(64) NOT NULL, pid INTEGER NOT NULL, attempt INTEGER NOT NULL)")
        )
        await session.execute(text("DELETE FROM job_effects"))


async def record_effect(session: AsyncSession, key: str, *, attempt: int) -> None:
    await session.execute(
        text("INSERT INTO job_effects (key, pid, attempt) VALUES (:key, :pid, :attempt)"),
        {"key": key, "pid": os.getpid(), "attempt": attempt},
    )


async def effects(db: Database) -> list[tuple[str, int, int]]:
    async with db.session() as session:
        rows = await session.execute(text("SELECT key, pid, attempt FROM job_effects ORDER BY key"))
        return [tuple(row) for row in rows]


async def eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 15.0, every: float = 0.05) -> T:
    """Poll until ``check`` returns something truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(every)
