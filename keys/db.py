"""The key store's database engine: its own SQLite file, or its own PostgreSQL schema.

SQLite notes. Python's sqlite3 (and aiosqlite on top of it) delays BEGIN until the first
DML statement, so SELECTs run outside the transaction and a read-then-write upgrades
its lock mid-way (SQLITE_BUSY without waiting). We switch the driver's transaction
handling off and emit BEGIN ourselves, as SQLAlchemy's SQLite docs recommend;
writers use BEGIN IMMEDIATE so they queue on ``busy_timeout`` instead of failing, and
single-statement reads (:func:`reader`) skip BEGIN altogether.
``secure_delete`` zeroes deleted cells on every connection, which is what makes a
DELETE a shred; the WAL checkpoint after it removes the old page images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keys.errors import KeysError
from keys.models import SCHEMA

WRITE = {"keys_write": True}
_BUSY_TIMEOUT_MS = 15000
# Fold the WAL every 100 pages (SQLite's default: 1000). An erasure ends with a TRUNCATE
# checkpoint, which copies whatever other writers left in the WAL: with the default, up to
# ~4 MiB of object-key inserts made just before it, so erasing after a burst of uploads
# cost 2-3x an erasure after quiet (bench/RESULTS.md, "Erasure ratio"). Key rows are tiny;
# writers pay one more small checkpoint every ~25 object keys instead.
WAL_AUTOCHECKPOINT_PAGES = 100
_SQLITE_PRAGMAS = (
    f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}",
    "PRAGMA secure_delete=ON",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
)


def normalise_url(url: str | sa.URL) -> sa.URL:
    """Map plain ``sqlite:``/``postgresql:`` URLs onto the async drivers we ship."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise KeysError(
                "the key store needs a SQLite file: an in-memory store cannot be shredded or kept"
            )
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise KeysError(f"unsupported key store database {backend!r}: use sqlite or postgresql")


def reader(engine: AsyncEngine) -> AsyncEngine:
    """A view of the engine for single-statement reads: no BEGIN/ROLLBACK round trips.

    One SELECT is its own consistent snapshot, so the transaction would buy nothing.
    SQLite skips our BEGIN; PostgreSQL uses driver-level autocommit.
    """
    if is_sqlite(engine):
        return engine.execution_options(keys_read=True)
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str | sa.URL, *, schema: str = SCHEMA, **engine_kw: Any) -> AsyncEngine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        _precreate_private_file(Path(parsed.database or ""))
        # A fixed pool: overflow connections would each start an aiosqlite thread and
        # re-run the PRAGMAs on every burst of concurrent key lookups.
        engine_kw.setdefault("pool_size", 16)
        engine_kw.setdefault("max_overflow", 0)
        engine_kw.setdefault("pool_timeout", 60)
        engine_kw.setdefault("hide_parameters", True)  # wrapped keys and ids never reach a log line
        engine = create_async_engine(
            parsed,
            execution_options={"schema_translate_map": {SCHEMA: None}},
            **engine_kw,
        )
        _install_sqlite_hooks(engine)
        return engine
    engine_kw.setdefault("pool_pre_ping", True)
    engine_kw.setdefault("hide_parameters", True)
    return create_async_engine(
        parsed,
        execution_options={"schema_translate_map": {SCHEMA: schema}},
        **engine_kw,
    )


def _precreate_private_file(path: Path) -> None:
    # SQLite creates files with the umask (often 0644) and gives -wal/-shm the main
    # file's mode, so creating it 0600 first keeps all three private.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _install_sqlite_hooks(engine: AsyncEngine) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        if options.get("keys_read"):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("keys_write") else "BEGIN")


async def sqlite_checkpoint(engine: AsyncEngine, *, wait_ms: int = 100) -> bool:
    """Fold the WAL into the main file and truncate it to zero bytes, without waiting.

    Runs on the raw driver connection, outside any transaction: a checkpoint cannot
    complete inside one. ``wal_checkpoint(TRUNCATE)`` waits (through the busy handler)
    for every reader to leave its snapshot, holding the write lock all the while, so
    one backup-style reader would stall the caller and every writer behind it. With
    the busy timeout cut to ``wait_ms`` it copies what it can and returns; False means
    a reader kept it from completing and it must be retried later (the
    ``shred.checkpoint`` job does).
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if driver is None:  # only an invalidated connection has none
            raise RuntimeError("the pooled SQLite connection has no driver connection")
        await driver.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
        try:
            cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = await cursor.fetchone()
            await cursor.close()
        finally:
            # The connection goes back to the pool: later statements wait as usual.
            await driver.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return row is not None and row[0] == 0


async def postgres_dead_tuples(engine: AsyncEngine, table: sa.Table, *, schema: str) -> int:
    """Dead tuples the statistics collector counts in one key table (0 when unknown)."""
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        count = await auto.scalar(
            sa.text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = :s AND relname = :t"),
            {"s": schema, "t": table.name},
        )
    return int(count or 0)


async def postgres_vacuum(engine: AsyncEngine, table: sa.Table, *, schema: str) -> None:
    """VACUUM one key table so dead tuples holding overwritten keys are pruned.

    VACUUM refuses to run inside a transaction block, hence the autocommit connection.
    """
    quote = engine.dialect.identifier_preparer.quote
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql(f"VACUUM {quote(schema)}.{quote(table.name)}")
