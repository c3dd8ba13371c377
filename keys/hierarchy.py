"""Shared internals of the key store: reading and unwrapping each level, and shredding.

Split from :mod:`keys.store` (the public API) and :mod:`keys.rotation` (KEK versions).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keys import aead, db
from keys.cache import KeyCache
from keys.errors import KeyDestroyed, KeyNotFound
from keys.models import object_keys, patient_deks, tenant_keks, tenants
from keys.providers import LEGACY_VERSION, RootKeyProvider

log = logging.getLogger("keys.store")

KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class PatientKey:
    dek_id: str
    kek_version: int
    key: bytes = field(repr=False)


class ObjectKey(bytes):
    """A 256-bit object key that also carries its ``key_id`` (the blob header binding).

    It is ``bytes``, so it goes straight into the blob cipher; its repr never shows the key.
    """

    key_id: str
    #: the last blob cipher derived from this key (``keys.blobio.cipher_for``): kept with
    #: the key object the cache holds, so it is dropped whenever the key is
    derived: tuple[Any, bytes, Any] | None

    def __new__(cls, key: bytes, *, key_id: str) -> ObjectKey:
        obj = super().__new__(cls, key)
        obj.key_id = key_id
        obj.derived = None
        return obj

    def __repr__(self) -> str:
        return f"ObjectKey(key_id={self.key_id!r})"

    __str__ = __repr__


def kek_context(tenant_id: str, version: int) -> dict[str, str]:
    return {"purpose": "tenant-kek", "tenant": tenant_id, "kek_version": str(version)}


def index_key_context(tenant_id: str) -> dict[str, str]:
    return {"purpose": "blind-index", "tenant": tenant_id}


def epoch_index_context(tenant_id: str, version: int) -> dict[str, str]:
    return {"purpose": "blind-index-epoch", "tenant": tenant_id, "kek_version": str(version)}


def purpose_key_context(tenant_id: str, purpose: str) -> dict[str, str]:
    return {"purpose": "tenant-purpose-key", "tenant": tenant_id, "name": purpose}


def now() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


_KEK_ROW = sa.select(tenant_keks.c.wrapped, tenant_keks.c.root_version).where(
    tenant_keks.c.tenant_id == sa.bindparam("t"), tenant_keks.c.version == sa.bindparam("v")
)
_DEK_ROW = sa.select(patient_deks.c.dek_id, patient_deks.c.kek_version, patient_deks.c.wrapped).where(
    patient_deks.c.tenant_id == sa.bindparam("t"), patient_deks.c.patient_id == sa.bindparam("p"))


class KeyHierarchy:
    def __init__(
        self, engine: AsyncEngine, root: RootKeyProvider, *, cache: KeyCache, schema: str,
        backup_window: timedelta = timedelta(days=35),
    ) -> None:
        self._engine = engine
        # Fixes each new root-key version's destroy_after (receipts sign it).
        self.backup_window = backup_window
        self._writer = engine.execution_options(**db.WRITE)
        self._reader = db.reader(engine)
        # The key row read on every use of a key: no thread hop on SQLite.
        self._points = db.PointReader(engine)
        self._root = root
        self._cache = cache
        self._schema = schema
        self._sqlite = db.is_sqlite(engine)

    def evict(self, tenant_id: str, patient_id: str, object_id: str | None = None) -> None:
        """Drop cached keys of a patient (or of one object); call it on a peer's erasure NOTIFY."""
        if object_id is None:
            self._cache.evict_where(lambda k: k[0] in ("dek", "obj") and k[1:3] == (tenant_id, patient_id))
        else:
            self._cache.evict_where(lambda k: k[0] == "obj" and k[1:4] == (tenant_id, patient_id, object_id))

    # -- reading the hierarchy -------------------------------------------------------

    async def _current_version(self, tenant_id: str) -> int:
        async with self._reader.connect() as conn:
            version = await conn.scalar(
                sa.select(tenants.c.current_kek_version).where(tenants.c.tenant_id == tenant_id)
            )
        if version is None:
            raise KeyNotFound("tenant has no key hierarchy; call ensure_tenant first")
        return int(version)

    async def _lock_tenant(self, conn: AsyncConnection, tenant_id: str) -> int | None:
        """Serialises writers of one tenant (row lock on PostgreSQL; SQLite writers are serial)."""
        version = await conn.scalar(
            sa.select(tenants.c.current_kek_version).where(tenants.c.tenant_id == tenant_id).with_for_update()
        )
        return None if version is None else int(version)

    async def _dek_row(self, tenant_id: str, patient_id: str) -> Any:
        return await self._points.first(_DEK_ROW, {"t": tenant_id, "p": patient_id})

    async def _unwrap_dek(
        self, tenant_id: str, patient_id: str, dek_id: str, kek_version: int, wrapped: bytes
    ) -> PatientKey:
        cache_key = ("dek", tenant_id, patient_id, dek_id)
        key = self._cache.get(cache_key)
        if key is None:
            kek = await self._kek(tenant_id, kek_version)
            key = aead.open_sealed(
                kek, wrapped, aead.aad(aead.LABEL_DEK, tenant_id, patient_id, dek_id, kek_version)
            )
            self._cache.put(cache_key, key)
        return PatientKey(dek_id=dek_id, kek_version=kek_version, key=key)

    async def _kek(self, tenant_id: str, version: int, *, conn: AsyncConnection | None = None) -> bytes:
        cache_key = ("kek", tenant_id, version)
        kek = self._cache.get(cache_key)
        if kek is not None:
            return kek
        if conn is None:  # a point read: no thread hop on SQLite (refilled by reads after every cache expiry)
            row = await self._points.first(_KEK_ROW, {"t": tenant_id, "v": version})
        else:
            row = (await conn.execute(_KEK_ROW, {"t": tenant_id, "v": version})).first()
        if row is None or row.wrapped is None:
            raise KeyDestroyed("KEK version is destroyed or missing")
        kek = await self._root_unwrap(row.root_version, row.wrapped, kek_context(tenant_id, version))
        self._cache.put(cache_key, kek)
        return kek

    async def _index_key(self, tenant_id: str) -> bytes:
        cache_key = ("idx", tenant_id)
        key = self._cache.get(cache_key)
        if key is None:
            async with self._reader.connect() as conn:
                row = (await conn.execute(
                    sa.select(tenants.c.index_key_wrapped, tenants.c.index_root_version)
                    .where(tenants.c.tenant_id == tenant_id)
                )).first()
            if row is None:
                raise KeyNotFound("tenant has no key hierarchy; call ensure_tenant first")
            if row.index_key_wrapped is None:
                raise KeyDestroyed("the tenant has no legacy index key (never had one, or it was retired)")
            key = await self._root_unwrap(row.index_root_version, row.index_key_wrapped, index_key_context(tenant_id))
            self._cache.put(cache_key, key)
        return key

    async def _root_unwrap(self, version_id: str | None, wrapped: bytes, context: dict[str, str]) -> bytes:
        # NULL in a root_version column: a row from before root-key epochs.
        return await self._root.unwrap(version_id or LEGACY_VERSION, wrapped, context)

    # -- shredding -------------------------------------------------------------------

    async def _overwrite(self, conn: AsyncConnection, table: sa.Table, where: Any,
                         columns: tuple[str, ...] = ("wrapped",)) -> None:
        """Replace ``wrapped`` with same-length noise before a DELETE (PostgreSQL).

        PostgreSQL never overwrites in place (MVCC), but this way the newest tuple
        version holds no key, and VACUUM afterwards prunes the older one. SQLite needs
        no pass: ``secure_delete`` zeroes the cell on DELETE.
        """
        if self._sqlite:
            return
        pk = list(table.primary_key.columns)
        for column in columns:
            rows = (
                await conn.execute(sa.select(*pk, sa.func.length(table.c[column]).label("n")).where(where))
            ).all()
            for row in rows:
                if row.n:
                    match = sa.and_(*(col == getattr(row, col.name) for col in pk))
                    await conn.execute(table.update().where(match).values({column: secrets.token_bytes(row.n)}))

    async def _harden(self, *tables: sa.Table) -> None:
        """After a committed shred, remove old page images: WAL checkpoint or VACUUM.

        Best effort, never raised and never waiting on readers: the key is already gone
        from the live store (every node reads the row), and the caller must still get
        the destroyed key ids for the shred ledger. A reader holding an older snapshot
        (a backup, a long report) keeps the old page images alive until it ends; the
        periodic ``shred.checkpoint`` job (:meth:`finish_shreds`) finishes the work then.
        """
        try:
            if self._sqlite:
                if not await db.sqlite_checkpoint(self._engine):
                    log.info("key store WAL checkpoint deferred: a reader holds an older snapshot")
            else:
                for table in tables:
                    await db.postgres_vacuum(self._engine, table, schema=self._schema)
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            log.warning("key store hardening after shred failed: %s", type(exc).__name__)

    @property
    def waits_for_readers(self) -> bool:
        """Whether :meth:`finish_shreds` can be held up by a reader's snapshot and is worth
        retrying soon (SQLite's checkpoint); PostgreSQL's VACUUM reports through lagging
        statistics instead, so a retry right away tells nothing."""
        return self._sqlite

    async def finish_shreds(self) -> bool:
        """Finish removing old page images of shredded keys; True when nothing is left.

        SQLite: ``wal_checkpoint(TRUNCATE)`` with a bounded wait (False while a reader still
        holds a snapshot older than the shred). PostgreSQL: VACUUM each key table that
        has dead tuples (a snapshot older than the shred still keeps them; autovacuum
        and the next run catch up). Cheap when there is nothing to do; idempotent.
        """
        if self._sqlite:
            return await db.sqlite_checkpoint(self._engine)
        done = True
        for table in (patient_deks, object_keys, tenant_keks):
            if await db.postgres_dead_tuples(self._engine, table, schema=self._schema):
                await db.postgres_vacuum(self._engine, table, schema=self._schema)
                done = False  # the statistics lag; the next run sees whether it held
        return done
