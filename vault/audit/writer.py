"""The group-commit writer of read audits: one task, one dedicated connection, one
transaction per batch, as few round trips as the backend allows.

A batch is written in three statements whatever its size: the heads of its tenants
(one ``SELECT``, ``FOR UPDATE`` on PostgreSQL, in tenant order), every entry (one
``executemany`` INSERT), every head (one ``executemany`` UPDATE), then COMMIT.

The statements are plain SQL on the driver's own connection, prepared once: a batch
costs no SQLAlchemy compilation or result processing (that was ~15% of the read path's
CPU, bench/RESULTS.md). The columns they name are checked against the models when the
writer is made (:func:`_sql`), and ``tests/audit`` verifies every chain they write.

- SQLite: a ``sqlite3`` connection owned by one dedicated thread; the whole batch runs
  there in one hop (``BEGIN IMMEDIATE`` ... ``COMMIT``), with the pragmas of every other
  connection (``synchronous=FULL``: durable before the waiting reads answer). SQLite's
  file lock orders it with the other writers (the busy timeout makes it wait, in its own
  thread, never on the event loop).
- PostgreSQL: a dedicated asyncpg connection (no thread at all; asyncpg prepares and
  caches the statements); the head row locks order it with appends made inside other
  transactions. A connection found dead before the batch wrote anything is replaced and
  the batch retried once.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url

from vault.audit.models import AuditEntry, AuditHead
from vault.db import Database, utcnow
from vault.db.engine import SQLITE_PRAGMAS

if TYPE_CHECKING:
    from vault.audit.service import AuditEvent

_heads = cast(sa.Table, AuditHead.__table__)
_entries = cast(sa.Table, AuditEntry.__table__)
#: entries per INSERT statement of the SQLite writer (11 parameters each)
INSERT_ROWS = 64
#: the entry columns a batch writes, in parameter order (``id`` is the database's)
ENTRY_COLUMNS = ("tenant_id", "seq", "at", "actor", "role", "action", "targets", "outcome", "request_id",
                 "prev_hash", "hash")


def _sql(mark: Any) -> tuple[str, str]:
    """(INSERT of one entry, UPDATE of one head) with placeholders ``mark(n)`` (1-based)."""
    for name in ENTRY_COLUMNS:
        _entries.c[name]  # KeyError: the model changed under this writer
    for name in ("tenant_id", "seq", "hash", "updated_at"):
        _heads.c[name]
    insert = (f"INSERT INTO {_entries.name} ({', '.join(ENTRY_COLUMNS)}) "
              f"VALUES ({', '.join(mark(i + 1) for i in range(len(ENTRY_COLUMNS)))})")
    update = f"UPDATE {_heads.name} SET seq = {mark(1)}, hash = {mark(2)}, updated_at = {mark(3)} WHERE tenant_id = {mark(4)}"
    return insert, update


def build_rows(events: Sequence[AuditEvent], heads: dict[str, tuple[int, str]], now: datetime) -> tuple[list[dict[str, Any]], dict[str, tuple[int, str]]]:
    """Chain ``events`` onto ``heads`` (tenant -> (seq, hash)); returns the entry rows
    and the new heads. Pure: the caller holds the head locks."""
    from vault.audit.service import canonical, canonical_targets, chain_hash

    rows: list[dict[str, Any]] = []
    new_heads = dict(heads)
    by_tenant: dict[str, list[AuditEvent]] = defaultdict(list)
    for event in events:
        by_tenant[event.tenant_id].append(event)
    for tenant_id in sorted(by_tenant):
        seq, prev = new_heads[tenant_id]
        for event in by_tenant[tenant_id]:
            seq += 1
            fields: dict[str, Any] = dict(
                tenant_id=tenant_id, seq=seq, at=now, actor=event.actor, role=event.role, action=event.action,
                targets=canonical_targets(event.targets), outcome=event.outcome,
                request_id=event.request_id,
            )
            digest = chain_hash(prev, canonical(**fields))
            rows.append({**fields, "prev_hash": prev, "hash": digest})
            prev = digest
        new_heads[tenant_id] = (seq, prev)
    return rows, new_heads


class BatchWriter(Protocol):
    async def write(self, events: Sequence[AuditEvent]) -> None: ...
    async def close(self) -> None: ...


_sqlite = sqlite_dialect.dialect()
#: what SQLAlchemy would store for a timestamp (vault.db.UTCDateTime: naive UTC text)
_SQLITE_AT = cast(Any, _entries.c.at.type.dialect_impl(_sqlite).bind_processor(_sqlite))


def _tenants_of(events: Sequence[AuditEvent]) -> list[str]:
    return sorted({e.tenant_id for e in events})


def _check_heads(tenants: list[str], heads: dict[str, tuple[int, str]]) -> None:
    missing = [t for t in tenants if t not in heads]
    if missing:
        raise LookupError(f"{len(missing)} tenant(s) without an audit head")


@functools.cache  # at most INSERT_ROWS shapes of the one INSERT
def _insert_rows(insert: str, n: int) -> str:
    """``insert`` (one row of placeholders) extended to ``n`` rows."""
    one = insert.partition(" VALUES ")[2]
    return insert + ", " + ", ".join([one] * (n - 1)) if n > 1 else insert


class SqliteBatchWriter:
    """One ``sqlite3`` connection in one dedicated thread."""

    def __init__(self, url: str) -> None:
        self._path = make_url(url).database or ""
        self._insert, self._update = _sql(lambda n: "?")
        self._conn: sqlite3.Connection | None = None  # opened, used and closed in the writer thread
        self._turn: int | None = None  # the lock file's descriptor (see _write)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in SQLITE_PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn

    def _write(self, events: Sequence[AuditEvent]) -> None:
        if self._conn is None:
            self._conn = self._connect()
        if self._turn is None and self._path not in ("", ":memory:"):
            self._turn = os.open(self._path + "-audit.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # Writers of several processes (`vault serve --processes N`) take turns on a lock
        # file first: flock wakes the next one the moment the lock is free, where SQLite's
        # busy handler would sleep 1, 2, 5, 10 ... ms between tries. Empty, never read.
        if self._turn is not None:
            fcntl.flock(self._turn, fcntl.LOCK_EX)
        try:
            self._write_locked(self._conn, events)
        finally:
            if self._turn is not None:
                fcntl.flock(self._turn, fcntl.LOCK_UN)

    def _write_locked(self, conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> None:
        tenants = _tenants_of(events)
        conn.execute("BEGIN IMMEDIATE")  # SQLite's one write lock: no FOR UPDATE needed
        try:
            marks = ", ".join("?" * len(tenants))
            heads = {t: (seq, h) for t, seq, h in conn.execute(
                f"SELECT tenant_id, seq, hash FROM {_heads.name} WHERE tenant_id IN ({marks})", tenants)}
            _check_heads(tenants, heads)
            now = utcnow()
            rows, new_heads = build_rows(events, heads, now)
            at = _SQLITE_AT(now)
            # Multi-row INSERTs rather than executemany: each statement step hands the GIL
            # back and must win it again from the busy event loop, so one step per entry
            # made the batch wait for the loop once per entry.
            for lo in range(0, len(rows), INSERT_ROWS):
                chunk = rows[lo:lo + INSERT_ROWS]
                conn.execute(_insert_rows(self._insert, len(chunk)),
                             [at if c == "at" else row[c] for row in chunk for c in ENTRY_COLUMNS])
            conn.executemany(self._update, [(seq, h, at, t) for t, (seq, h) in sorted(new_heads.items())])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def write(self, events: Sequence[AuditEvent]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, events)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        turn, self._turn = self._turn, None
        if turn is not None:
            os.close(turn)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)


def _chained_insert_sql() -> str:
    """One statement that appends a single tenant's entries only if its head is still
    where this writer left it: the head moves (``seq``, ``hash``) and the entries go in
    together, or neither does. Run in autocommit, it is its own durable transaction."""
    for name in ENTRY_COLUMNS:
        _entries.c[name]
    arrays = ENTRY_COLUMNS[3:]  # actor ... hash; tenant_id, seq and at are given apart
    types = {"seq": "bigint"}
    unnest = ", ".join(f"${i + 7}::{types.get(name, 'text')}[]" for i, name in enumerate(("seq", *arrays)))
    return (f"WITH head AS (UPDATE {_heads.name} SET seq = $1, hash = $2, updated_at = $3 "
            f"WHERE tenant_id = $4 AND seq = $5 AND hash = $6 RETURNING 1) "
            f"INSERT INTO {_entries.name} ({', '.join(ENTRY_COLUMNS)}) "
            f"SELECT $4, e.seq, $3, {', '.join('e.' + name for name in arrays)} "
            f"FROM unnest({unnest}) AS e(seq, {', '.join(arrays)}) "
            f"WHERE EXISTS (SELECT 1 FROM head)")


class PostgresBatchWriter:
    """A dedicated asyncpg connection: the writer never queues for the shared pool.

    It remembers the head it last wrote for each tenant. A batch of one tenant whose head
    it knows is one statement and one round trip (:func:`_chained_insert_sql`, in
    autocommit: the head update and the entries commit together, or nothing does when
    the head has moved meanwhile — another node, or an entry appended inside another
    transaction). Otherwise, and after such a miss, the batch takes the locking path:
    ``BEGIN``, the heads ``FOR UPDATE``, both ``executemany``, ``COMMIT``."""

    def __init__(self, url: str) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._insert, self._update = _sql(lambda n: f"${n}")
        self._chained = _chained_insert_sql()
        self._conn: Any = None
        self._heads: dict[str, tuple[int, str]] = {}  # tenant -> (seq, hash) this writer last wrote
        self.chained = self.locked = 0  # batches written each way (tests, benchmark)

    async def _connection(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]  # the PostgreSQL driver, only where it is used

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
        return self._conn

    async def write(self, events: Sequence[AuditEvent]) -> None:
        import asyncpg

        tenants = _tenants_of(events)
        if len(tenants) == 1 and tenants[0] in self._heads:
            try:
                if await self._write_chained(await self._connection(), tenants[0], events):
                    self.chained += 1
                    return
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                await self._drop()  # whether it committed is unknown; the head was forgotten (read again next time)
                raise
        try:
            await self._write(await self._connection(), events)
        except _Unwritten:  # the connection died before anything was sent: once more on a new one
            await self._drop()
            await self._write(await self._connection(), events)
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            await self._drop()
            raise

    async def _write_chained(self, conn: Any, tenant_id: str, events: Sequence[AuditEvent]) -> bool:
        """The one-statement append; False (nothing written) when the head had moved."""
        old = self._heads.pop(tenant_id)
        now = utcnow()
        entries, new_heads = build_rows(events, {tenant_id: old}, now)
        seq, digest = new_heads[tenant_id]
        columns = [[row[name] for row in entries] for name in ("seq", *ENTRY_COLUMNS[3:])]
        status = await conn.execute(self._chained, seq, digest, now, tenant_id, old[0], old[1], *columns)
        if status != f"INSERT 0 {len(entries)}":
            return False
        self._heads[tenant_id] = (seq, digest)
        return True

    async def _write(self, conn: Any, events: Sequence[AuditEvent]) -> None:
        import asyncpg

        tenants = _tenants_of(events)
        try:
            transaction = conn.transaction()
            await transaction.start()
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
            raise _Unwritten() from exc
        try:
            rows = await conn.fetch(f"SELECT tenant_id, seq, hash FROM {_heads.name} WHERE tenant_id = ANY($1::text[]) "
                                    "ORDER BY tenant_id FOR UPDATE", tenants)
            heads = {r["tenant_id"]: (r["seq"], r["hash"]) for r in rows}
            _check_heads(tenants, heads)
            now = utcnow()
            entries, new_heads = build_rows(events, heads, now)
            await conn.executemany(self._insert, [tuple(row[c] for c in ENTRY_COLUMNS) for row in entries])
            await conn.executemany(self._update, [(seq, h, now, t) for t, (seq, h) in sorted(new_heads.items())])
        except BaseException:
            if not conn.is_closed():
                await transaction.rollback()
            raise
        for tenant_id in tenants:
            self._heads.pop(tenant_id, None)
        await transaction.commit()
        self._heads.update(new_heads)
        self.locked += 1

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class _Unwritten(Exception):
    """The batch's transaction could not start: nothing of it reached the database."""


def open_batch_writer(db: Database) -> BatchWriter:
    return batch_writer_for(db.url)


def batch_writer_for(url: str) -> BatchWriter:
    """The backend's writer for a database URL (the audit writer process has no Database)."""
    return SqliteBatchWriter(url) if url.startswith("sqlite") else PostgresBatchWriter(url)
