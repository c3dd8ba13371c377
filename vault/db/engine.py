"""Engines and transactions for SQLite (embedded default) and PostgreSQL.

SQLite allows one writer at a time. A deferred ``BEGIN`` that later writes can fail
at once with "database is locked" (the busy timeout does not apply to a lock
upgrade in WAL mode), so every write transaction starts with ``BEGIN IMMEDIATE``
on a dedicated one-connection engine: writers queue in Python instead of spinning
on the file lock, while readers use their own pool and never block on writers (WAL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, Result, Row, event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from keys.db import PointReader, release_on_invalidate


_BUSY_TIMEOUT_MS = 30000
_SINGLE_READ = "keys_read"  # the option keys.db.reader sets: one statement, no BEGIN
#: every connection to the metadata database (the audit writer's raw one included)
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",  # the audit log is durable before a response
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}",
    "PRAGMA secure_delete=ON",
)


def install_sqlite_pragmas(engine: Engine, *, immediate: bool) -> None:
    """Our connection settings and our own BEGIN on every connection of ``engine`` (a sync
    engine, or an async engine's ``sync_engine``). A connection used with the execution
    option ``keys_read`` (keys.db.reader) runs one SELECT without BEGIN: one statement is its own
    consistent snapshot, so the BEGIN/COMMIT round trips would buy nothing."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        if conn.get_execution_options().get(_SINGLE_READ):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    release_on_invalidate(engine)  # a cancelled statement must keep neither the write lock nor a snapshot


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    # hide_parameters: SQL values (blind indexes, token digests, sealed fields) never
    # reach a log line or an exception message, whatever the log level.
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60, hide_parameters=True)
    install_sqlite_pragmas(engine.sync_engine, immediate=immediate)
    return engine


class Database:
    """The metadata database: ``transaction()`` for writes, ``session()`` for reads."""

    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            self.read_engine = _sqlite_engine(url, immediate=False, pool_size=pool_size)
            self.write_engine = _sqlite_engine(url, immediate=True, pool_size=1)
        else:
            self.read_engine = self.write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
            )
        # One-statement reads on hot paths: no BEGIN/COMMIT round trips, and on SQLite
        # no thread hop either (keys.db.PointReader).
        self._points = PointReader(self.read_engine)
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._write = async_sessionmaker(self.write_engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed when the block exits without error."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work (never commit in it)."""
        async with self._read() as session, session.begin():
            yield session

    async def first(self, statement: Executable, params: dict[str, Any] | None = None) -> Row[Any] | None:
        """The first row of one SELECT, in no transaction of its own (hot read paths);
        build ``statement`` once, with ``bindparam``s."""
        row: Row[Any] | None = await self._points.first(statement, params)
        return row

    async def checkpoint(self, *, wait_ms: int = 100) -> bool:
        """SQLite: fold the WAL into the main file and truncate it, waiting at most
        ``wait_ms`` for readers; True when it completed. PostgreSQL: True (nothing to do).

        After an erasure, ``secure_delete`` has zeroed the cells that held the blind
        index and the deleted rows, but older page images stay in the WAL (and in the
        main file until the WAL is folded in). ``wal_checkpoint(TRUNCATE)`` would wait
        for every reader on its busy handler while holding the write lock, so the wait
        is bounded here and an incomplete checkpoint is retried by the
        ``shred.checkpoint`` job.
        """
        if self.dialect != "sqlite":
            return True
        async with self.read_engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            if raw is None:  # only an invalidated connection has none
                raise RuntimeError("the pooled SQLite connection has no driver connection")
            await raw.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
            try:
                cursor = await raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                row = await cursor.fetchone()
                await cursor.close()
            finally:
                await raw.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return row is not None and row[0] == 0

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        self._points.close()
        await self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            await self.write_engine.dispose()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched. ``AsyncSession.execute`` is typed as returning a
    plain ``Result``; for those statements it is a ``CursorResult``, which counts them."""
    return cast(CursorResult[Any], result).rowcount
