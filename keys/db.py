"""The key store's database engine: its own SQLite file, or its own PostgreSQL schema.

SQLite notes. Python's sqlite3 (and aiosqlite on top of it) delays BEGIN until the first
DML statement, so SELECTs run outside the transaction and a read-then-write upgrades
its lock mid-way (SQLITE_BUSY without waiting). We switch the driver's transaction
handling off and emit BEGIN ourselves, as SQLAlchemy's SQLite docs recommend;
writers use BEGIN IMMEDIATE so they queue on ``busy_timeout`` instead of failing, and
single-statement reads (:func:`reader`) skip BEGIN altogether.
``secure_delete`` zeroes deleted cells on every connection, which is what makes a
DELETE a shred; the WAL checkpoint after it removes the old page images.

A task cancelled inside a statement (a job's time limit) gets its connection invalidated
by SQLAlchemy, which closes it without a ROLLBACK and leaves the statement's cursor
unfinalized. SQLite then keeps the closed connection as a "zombie" until that cursor is
garbage-collected — open transaction and write lock included, so every later
``BEGIN IMMEDIATE`` failed with "database is locked" — and the read snapshot of the
stepped statement too (a ROLLBACK ends the transaction, not a pending read), so no
``wal_checkpoint(TRUNCATE)`` could complete and a shredded key stayed in the WAL.
:func:`release_on_invalidate` closes that cursor and rolls the connection back first.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Literal, cast

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
    # Every media read checks its key row: at 16 concurrent reads SQLAlchemy's default pool
    # (5 + 10 overflow) opened and closed a connection for nearly every read.
    engine_kw.setdefault("pool_size", 16)
    engine_kw.setdefault("max_overflow", 16)
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

    release_on_invalidate(engine.sync_engine)


def release_on_invalidate(engine: sa.Engine) -> None:
    """Close the cursor of a cancelled statement and roll back a SQLite connection of
    ``engine`` before the pool drops it.

    SQLAlchemy treats a statement interrupted by an exit exception (``CancelledError``:
    a job's time limit, a request given up) as a disconnect: it invalidates the connection
    and closes it without a ROLLBACK and without closing the cursor, which the traceback
    keeps alive. The driver's thread finishes the step anyway, so the statement is left
    mid-result, and SQLite cannot close a connection with a statement pending: connection,
    transaction (write lock included) and the statement's read snapshot live on until that
    cursor is garbage-collected — seconds or much longer in a big process, where full
    collections are rare, and meanwhile no ``wal_checkpoint(TRUNCATE)`` completes. Closing
    the cursor resets the statement (its snapshot ends); the ROLLBACK then ends the
    transaction. Both wait, in the driver's queue, for the step under way to finish.
    """

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(context: sa.engine.ExceptionContext) -> None:
        cursor = getattr(context.execution_context, "cursor", None)
        if cursor is None or isinstance(context.original_exception, Exception):
            return  # an ordinary error: SQLAlchemy closes the cursor itself
        try:
            cursor.close()
        except Exception:  # closed already, or no event loop (gc): the ROLLBACK and close below still run
            pass

    @sa.event.listens_for(engine, "invalidate")
    def _on_invalidate(dbapi_connection: Any, _record: Any, _exc: BaseException | None) -> None:
        try:
            dbapi_connection.rollback()
        except Exception:  # closed already, or no event loop (gc): the close does what it can
            pass


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


class PointReader:
    """Single-statement reads on hot paths (a key row checked on every media read).

    SQLite: a dedicated synchronous connection, run on the caller's thread — the event
    loop — so a read costs no thread hop (through aiosqlite each statement is several:
    cursor, execute, fetch, close, reset). In WAL mode a reader takes no lock that a
    writer holds, so the read does not wait; the connection is ``query_only`` with a busy
    timeout of 0, and in the rare case SQLite still answers busy (a WAL reset by a
    checkpoint), the read goes through the async engine, which may wait. A statement
    whose columns need no type conversion (strings, integers, bytes) is compiled once and
    run on the DBAPI connection directly. PostgreSQL: such a statement runs on a few
    asyncpg connections of the reader's own (:class:`_Connections`), in autocommit; other
    statements go through the async engine.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._fallback = reader(engine)
        self._sync: sa.Engine | None = None
        self._raw: Any = None
        self._compiled: dict[int, tuple[sa.Executable, str, tuple[str, ...], Any] | None] = {}
        self._dialect = engine.dialect
        self._translate = engine.get_execution_options().get("schema_translate_map")
        # PostgreSQL: compiled-once statements run on a small asyncpg pool of our own, with no
        # SQLAlchemy execution, greenlet or pre-ping round trip per read (through the engine,
        # the key row of a media read cost ~20% of the read path's CPU). A URL with driver
        # options keeps the engine, which knows how to pass them.
        self._pg_dsn: str | None = None
        self._pool: _Connections | None = None
        if not is_sqlite(engine) and not engine.url.query:
            self._pg_dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        if is_sqlite(engine):
            self._sync = sa.create_engine(
                # Two connections: the compiled-once path keeps one for good (``_raw``), and a
                # statement with typed columns (timestamps) checks out the other; with one,
                # that checkout would wait on the event loop for a connection never returned.
                engine.url.set(drivername="sqlite+pysqlite"), pool_size=2, max_overflow=0, hide_parameters=True,
                connect_args={"check_same_thread": False},
                execution_options={"schema_translate_map": self._translate} if self._translate else {},
            )

            @sa.event.listens_for(self._sync, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                for pragma in ("PRAGMA query_only=ON", "PRAGMA busy_timeout=0"):
                    cursor.execute(pragma)
                cursor.close()

            @sa.event.listens_for(self._sync, "begin")
            def _on_begin(conn: sa.Connection) -> None:
                return None  # one statement, its own snapshot: no BEGIN

    async def first(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> Any:
        """The first row of ``statement``, or None. With ``params``, ``statement`` must be
        built once (module level, with ``bindparam``s): it is then compiled once."""
        if self._sync is not None:
            try:
                plain = self._plain(statement) if params is not None else None  # built once: compile once
                if plain is not None and params is not None:
                    return self._first_plain(plain, params or {})
                with self._sync.connect() as conn:
                    return conn.execute(statement, params).first()
            except sa.exc.OperationalError as exc:
                if not _sqlite_busy(exc):
                    raise
            except sqlite3.OperationalError as exc:
                if not _sqlite_busy(exc):
                    raise
        elif self._pg_dsn is not None and params is not None:
            plain = self._plain(statement)
            if plain is not None:
                import asyncpg  # type: ignore[import-untyped]  # the PostgreSQL driver, only where it is used

                try:
                    return await self._first_pg(plain, params)
                except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                    pass  # the engine below reconnects, or raises what is wrong
        async with self._fallback.connect() as conn:
            return (await conn.execute(statement, params)).first()

    @property
    def concurrent(self) -> bool:
        """Statements run on connections of their own, side by side (PostgreSQL): what
        :class:`PointBatches` folds. On SQLite a point read is a synchronous call on the
        event loop, with nothing to fold."""
        return self._pg_dsn is not None

    async def rows(self, statement: sa.Executable, params: dict[str, Any]) -> list[Any]:
        """Every row of ``statement`` (built once, with ``bindparam``s) on PostgreSQL's
        own connections; elsewhere through the async engine."""
        plain = self._plain(statement) if self._pg_dsn is not None else None
        if plain is not None:
            import asyncpg  # the PostgreSQL driver, only where it is used

            _, sql, names, row_type = plain
            try:
                return [row_type(*row) for row in await self._pg_pool().fetch(sql, *(params[name] for name in names))]
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                pass  # the engine below reconnects, or raises what is wrong
        async with self._fallback.connect() as conn:
            return list((await conn.execute(statement, params)).all())

    async def _first_pg(self, plain: tuple[sa.Executable, str, tuple[str, ...], Any], params: dict[str, Any]) -> Any:
        _, sql, names, row_type = plain
        row = await self._pg_pool().fetchrow(sql, *(params[name] for name in names))  # KeyError: a missing bindparam
        return None if row is None else row_type(*row)

    def _pg_pool(self) -> _Connections:
        """PostgreSQL's own connections, made on the first statement that needs them."""
        if self._pool is None:
            assert self._pg_dsn is not None
            self._pool = _Connections(self._pg_dsn, POINT_POOL_SIZE)
        return self._pool

    def _plain(self, statement: sa.Executable) -> tuple[sa.Executable, str, tuple[str, ...], Any] | None:
        key = id(statement)
        if key not in self._compiled:
            entry = None
            columns = list(getattr(statement, "selected_columns", ()))
            if columns and all(isinstance(c.type, _PLAIN_TYPES) for c in columns):
                compiled = cast(sa.ClauseElement, statement).compile(dialect=self._dialect,
                                                                    schema_translate_map=self._translate)
                sql = compiled.string
                for schema, target in (self._translate or {}).items():  # what execution would render
                    sql = sql.replace(f"__[SCHEMA_{schema}].", "" if target is None else f'"{target}".')
                names = tuple(getattr(compiled, "positiontup", None) or ())  # SQLCompiler: qmark / $n order
                row_type = collections.namedtuple("PointRow", [c.key for c in columns], rename=True)  # type: ignore[misc]
                entry = (statement, sql, names, row_type)  # the statement is kept alive: id() stays its
            self._compiled[key] = entry
        return self._compiled[key]

    def _first_plain(self, plain: tuple[sa.Executable, str, tuple[str, ...], Any], params: dict[str, Any]) -> Any:
        _, sql, names, row_type = plain
        if self._raw is None:
            assert self._sync is not None
            self._raw = self._sync.raw_connection()
        cursor = self._raw.driver_connection.execute(sql, tuple(params[name] for name in names))  # KeyError: a missing bindparam
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()  # resets the statement: no read snapshot is left open
        return None if row is None else row_type(*row)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()  # one-statement reads: nothing is left half-done on them
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._sync is not None:
            self._sync.dispose()


_PLAIN_TYPES = (sa.String, sa.Integer, sa.LargeBinary)
#: connections of a PostgreSQL PointReader (the key store's and the metadata database's each)
POINT_POOL_SIZE = 8


class _Connections:
    """Up to ``size`` asyncpg connections for single autocommit SELECTs, lent one
    statement at a time.

    Not ``asyncpg.create_pool``: its acquire and release (a queue, a shielded release
    task, timeouts, the reset hook) cost ~80 µs of CPU per statement on this machine,
    against ~100 µs for the statement itself (bench/RESULTS.md), and a point reader needs
    none of it — its connections hold no session state and never a transaction. A
    connection whose statement failed or was cancelled is closed, never lent again (a
    cancelled asyncpg call leaves the connection mid-protocol); a new one is opened when
    needed."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn, self._size = dsn, size
        self._idle: list[Any] = []
        self._opened = 0  # lent + idle + being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    # Plain functions returning :meth:`_lend`'s coroutine: no second coroutine per statement.
    def fetchrow(self, sql: str, *args: Any) -> Coroutine[Any, Any, Any]:
        return self._lend("fetchrow", sql, args)

    def fetch(self, sql: str, *args: Any) -> Coroutine[Any, Any, list[Any]]:
        return self._lend("fetch", sql, args)

    async def _lend(self, call: Literal["fetch", "fetchrow"], sql: str, args: tuple[Any, ...]) -> Any:
        """``conn.<call>(sql, *args)`` on a connection lent for that one statement."""
        conn = await self._take()
        try:
            result = await getattr(conn, call)(sql, *args)
        except BaseException:
            self._lost(conn)
            raise
        self._give_back(conn)
        return result

    async def _take(self) -> Any:
        import asyncpg  # the PostgreSQL driver, only where it is used

        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the point reader is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._opened -= 1
            if self._opened < self._size:
                self._opened += 1
                try:
                    return await asyncpg.connect(self._dsn)
                except BaseException:
                    self._opened -= 1
                    self._wake()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the wake-up on
                raise

    def _give_back(self, conn: Any) -> None:
        if self._closed:
            conn.terminate()
            return
        self._idle.append(conn)
        self._wake()

    def _lost(self, conn: Any) -> None:
        conn.terminate()
        self._opened -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def terminate(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.terminate()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


def _sqlite_busy(exc: Exception) -> bool:
    message = str(getattr(exc, "orig", exc)).lower()
    return "locked" in message or "busy" in message


class PointBatches:
    """Point reads of one shape that arrive together, folded into one statement per group.

    ``statement`` selects rows by the group's parameters (``group``, e.g. the tenant) and
    an array of identifiers (``many``, e.g. ``object_id = ANY(:os)``); each row names its
    identifier in ``column``. A read joins the batch being gathered — the reads that reach
    this point in the same turn of the event loop — which is sent once that turn is over,
    as one statement per group; it never joins a statement already sent, so every read's
    row is read by a statement sent after the read asked (an erasure committed before a
    read asked is seen by it). A failed statement fails its reads; a cancelled read leaves
    the others alone.

    On PostgreSQL each statement costs ~100 µs of the server process's CPU in asyncpg
    alone (bench/RESULTS.md), so 16 thumbnail reads at once cost one statement, not 16.
    For readers that run statements side by side (:attr:`PointReader.concurrent`); on
    SQLite a point read is a synchronous call of ~15 µs with nothing to fold."""

    def __init__(self, reader: PointReader, statement: sa.Executable, *, group: tuple[str, ...], many: str,
                 column: str) -> None:
        self._reader, self._statement = reader, statement
        self._group, self._many, self._column = group, many, column
        self._pending: dict[tuple[Any, ...], list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.statements = 0  # statements sent, for tests and the benchmark

    async def first(self, group: tuple[Any, ...], ident: Any) -> list[Any]:
        """The rows whose ``column`` is ``ident`` within ``group`` (usually one, or none)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._send)
        self._pending.setdefault(group, []).append((ident, future))
        return cast(list[Any], await future)

    def _send(self) -> None:
        pending, self._pending = self._pending, {}
        for group, waiting in pending.items():
            task = asyncio.get_running_loop().create_task(self._read(group, waiting))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _read(self, group: tuple[Any, ...], waiting: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        idents = list(dict.fromkeys(ident for ident, _ in waiting))
        self.statements += 1
        try:
            rows = await self._reader.rows(self._statement, {**dict(zip(self._group, group)), self._many: idents})
        except BaseException as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else KeysError("point read cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        found: dict[Any, list[Any]] = {}
        for row in rows:
            found.setdefault(getattr(row, self._column), []).append(row)
        for ident, future in waiting:
            if not future.done():
                future.set_result(found.get(ident, []))
