"""Cancel a task inside a database statement, as a job's time limit does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa


@contextmanager
def cancel_inside(accept: Callable[[sa.Connection, str], bool]) -> Iterator[list[asyncio.Task[Any]]]:
    """While open, the first statement ``accept(connection, sql)`` takes has its task
    cancelled just before it runs: the cancellation lands at the driver's await for
    that statement. Yields the cancelled task (a list of at most one)."""
    cancelled: list[asyncio.Task[Any]] = []

    def _before(conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        if not cancelled and accept(conn, statement):
            task = asyncio.current_task()
            assert task is not None
            cancelled.append(task)
            task.cancel()

    sa.event.listen(sa.Engine, "before_cursor_execute", _before)
    try:
        yield cancelled
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", _before)
