"""The group-commit writer of read audits: one task, one dedicated connection, one
transaction per batch, as few round trips as the backend allows.

A batch is written in three statements whatever its size: the heads of its tenants
(one ``SELECT``, ``FOR UPDATE`` on PostgreSQL, in tenant order), every entry (one
``executemany`` INSERT), every head (one ``executemany`` UPDATE), then COMMIT.

- SQLite: a ``sqlite3`` connection owned by one dedicated thread; the whole batch runs
  there in one hop (``BEGIN IMMEDIATE`` ... ``COMMIT``), with the pragmas of every other
  connection (``synchronous=FULL``: durable before the waiting reads answer), as plain SQL
  on the driver (no SQLAlchemy compilation or result processing per batch; the columns it
  names are checked against the models when the writer is made, :func:`_sql`). SQLite's
  file lock orders it with the other writers (the busy timeout makes it wait, in its own
  thread, never on the event loop).
- PostgreSQL: a dedicated one-connection engine (SQLAlchemy Core through ``run_sync``);
  the head row locks order it with appends made inside other transactions. A raw asyncpg
  writer was tried and measured slower here (bench/RESULTS.md), so this one stays.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from vault.audit.models import AuditEntry, AuditHead
from vault.db import Database, utcnow
from vault.db.engine import SQLITE_PRAGMAS

if TYPE_CHECKING:
    from vault.audit.service import AuditEvent

_heads = cast(sa.Table, AuditHead.__table__)
_entries = cast(sa.Table, AuditEntry.__table__)
#: the entry columns a batch writes, in parameter order (``id`` is the database's)
ENTRY_COLUMNS = ("tenant_id", "seq", "at", "actor", "role", "action", "targets", "outcome", "request_id",
                 "prev_hash", "hash")


_HEAD = sa.select(_heads.c.tenant_id, _heads.c.seq, _heads.c.hash).where(_heads.c.tenant_id == sa.bindparam("t"))
_HEAD_LOCKED = _HEAD.with_for_update()
_SET_HEAD = _heads.update().where(_heads.c.tenant_id == sa.bindparam("t")).values(
    seq=sa.bindparam("s"), hash=sa.bindparam("h"), updated_at=sa.bindparam("u", type_=_heads.c.updated_at.type))


def _sql(mark: Any) -> tuple[str, str]:
    """(INSERT of one entry, UPDATE of one head) with placeholders ``mark(n)`` (1-based, for
    drivers numbering them)."""
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
    from vault.audit.service import canonical, chain_hash

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
                targets=json.dumps(event.targets, sort_keys=True, separators=(",", ":")), outcome=event.outcome,
                request_id=event.request_id,
            )
            digest = chain_hash(prev, canonical(**fields))
            rows.append({**fields, "prev_hash": prev, "hash": digest})
            prev = digest
        new_heads[tenant_id] = (seq, prev)
    return rows, new_heads


def write_batch(conn: Connection, events: Sequence[AuditEvent]) -> None:
    """Append ``events`` in the connection's open transaction (sync Core: runs in the
    SQLite writer thread, or through ``run_sync`` on PostgreSQL)."""
    tenants = sorted({e.tenant_id for e in events})
    lock = conn.dialect.name != "sqlite"  # BEGIN IMMEDIATE already holds SQLite's one write lock
    if len(tenants) == 1:  # the usual batch: no expanding IN to render per execution
        rows = conn.execute(_HEAD_LOCKED if lock else _HEAD, {"t": tenants[0]})
    else:
        query = sa.select(_heads.c.tenant_id, _heads.c.seq, _heads.c.hash).where(_heads.c.tenant_id.in_(tenants))
        rows = conn.execute(query.order_by(_heads.c.tenant_id).with_for_update() if lock else query)
    heads = {row.tenant_id: (row.seq, row.hash) for row in rows}
    _check_heads(tenants, heads)
    now = utcnow()
    entries, new_heads = build_rows(events, heads, now)
    conn.execute(_entries.insert(), entries)
    conn.execute(_SET_HEAD, [{"t": t, "s": s, "h": h, "u": now} for t, (s, h) in sorted(new_heads.items())])


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


class SqliteBatchWriter:
    """One ``sqlite3`` connection in one dedicated thread."""

    def __init__(self, url: str) -> None:
        self._path = make_url(url).database or ""
        self._insert, self._update = _sql(lambda n: "?")
        self._conn: sqlite3.Connection | None = None  # opened, used and closed in the writer thread
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
        conn = self._conn
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
            conn.executemany(self._insert, [tuple(at if c == "at" else row[c] for c in ENTRY_COLUMNS) for row in rows])
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

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)


class PostgresBatchWriter:
    """A dedicated one-connection engine: the writer never queues for the shared pool."""

    def __init__(self, url: str) -> None:
        self._engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True, hide_parameters=True)

    async def write(self, events: Sequence[AuditEvent]) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(write_batch, events)

    async def close(self) -> None:
        await self._engine.dispose()


def open_batch_writer(db: Database) -> BatchWriter:
    return SqliteBatchWriter(db.url) if db.dialect == "sqlite" else PostgresBatchWriter(db.url)
