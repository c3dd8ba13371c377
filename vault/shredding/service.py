"""Crypto-shredding with a ledger: destroy the key in the key store, then record its id.

The key is destroyed FIRST. Erasure must never wait on, or be blocked by, the
metadata database: once the key store has deleted the row the data is gone, and
everything else is bookkeeping that can be repaired. The price is a crash window
between the key store's commit and the ledger row, in which the destroyed ids exist
only in memory (and in an ERROR log line, if the ledger write itself failed). Two
things close that window:

- every ``shred_*`` call is idempotent and self-healing: when the key store reports
  nothing left to destroy and the ledger has no row covering the patient (or object),
  it writes a *marker* row with ``key_id = NULL``;
- :meth:`ShredLedger.reconcile` runs ``shred_patient`` again for every patient marked
  erased in the metadata database that has no ``patient_dek`` row (the lifecycle's
  restart path).

:meth:`ShredLedger.reshred` replays the ledger against a restored key-store backup:
``KeyStore.reshred(ids)`` for every recorded id (object keys under a listed DEK go
too), and ``destroy_patient`` / ``destroy_object`` by (tenant, patient[, object]) for
marker rows, whose real ids then replace the marker.

Callers must not hold the metadata write transaction while calling the ``shred_*``
methods without passing that transaction's ``session`` (SQLite has one writer
connection, and the ledger would wait for it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, cast

from sqlalchemy import Table, and_, delete, exists, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from keys.store import KeyStore
from vault.db import Database, new_id, utcnow
from vault.patients.models import ERASED, Patient
from vault.shredding.models import CAUSES, ERASURE, OBJECT, PATIENT_DEK, ShredRecord

log = logging.getLogger("vault.shredding")

_PAGE = 5000
_ledger = cast(Table, ShredRecord.__table__)  # a Table, typed as its base FromClause


class ShredLedger:
    def __init__(self, db: Database, keys: KeyStore) -> None:
        self.db = db
        self.keys = keys

    # -- shredding -----------------------------------------------------------------------
    async def shred_patient(
        self, tenant_id: str, patient_id: str, *, cause: str, session: AsyncSession | None = None
    ) -> list[str]:
        """Destroy the patient's DEK, then record its id; return ``[dek_id]`` (``[]`` when
        it was already gone).

        One row whatever the number of photos: every object key is wrapped by the DEK and
        dies with it, and ``KeyStore.reshred`` of a DEK id also deletes the object keys
        under it, so the ledger's share of an erasure is O(1) (invariant 2).

        With ``session``, the rows join the caller's transaction (an erasure can commit
        them with its own changes); otherwise they are committed here.
        """
        _check_cause(cause)
        ids = await self.keys.destroy_patient(tenant_id, patient_id)
        at = utcnow()
        rows = [_row(ids[0], PATIENT_DEK, tenant_id, patient_id, None, at, cause)] if ids else []
        async with self._writing(session, [r["key_id"] for r in rows], tenant_id) as s:
            if rows:
                await _insert(s, rows)
            elif not await _covered(s, tenant_id, patient_id, None):
                await _insert(s, [_row(None, PATIENT_DEK, tenant_id, patient_id, None, at, cause)])
        return ids

    async def shred_object(
        self,
        tenant_id: str,
        patient_id: str,
        object_id: str,
        *,
        cause: str,
        session: AsyncSession | None = None,
    ) -> str | None:
        """Destroy one object's key, then record its id; return the id (None if already gone)."""
        _check_cause(cause)
        key_id = await self.keys.destroy_object(tenant_id, patient_id, object_id)
        at = utcnow()
        async with self._writing(session, [key_id] if key_id else [], tenant_id) as s:
            if key_id is not None:
                await _insert(s, [_row(key_id, OBJECT, tenant_id, patient_id, object_id, at, cause)])
            elif not await _covered(s, tenant_id, patient_id, object_id):
                await _insert(s, [_row(None, OBJECT, tenant_id, patient_id, object_id, at, cause)])
        return key_id

    @asynccontextmanager
    async def _writing(self, session: AsyncSession | None, ids: list[str], tenant_id: str) -> AsyncIterator[AsyncSession]:
        try:
            if session is not None:
                yield session
            else:
                async with self.db.transaction() as own:
                    yield own
        except BaseException:
            if ids:
                # Key ids are random UUIDs, not patient data; this line is the operator's
                # way to re-shred a restored backup should the ledger never get them.
                log.error("shred ledger write failed after the keys were destroyed",
                          extra={"tenant_id": tenant_id, "destroyed_key_ids": ids})
            raise

    # -- crash repair ----------------------------------------------------------------------
    async def reconcile(self, *, patients: Iterable[tuple[str, str]] | None = None) -> int:
        """Shred (again) erased patients whose ledger has no ``patient_dek`` row.

        ``patients`` (tenant id, patient id) pairs default to every patient whose status
        is ``erased`` in the metadata database. Returns how many were repaired.
        """
        if patients is None:
            covered = exists().where(
                ShredRecord.tenant_id == Patient.tenant_id,
                ShredRecord.patient_id == Patient.id,
                ShredRecord.kind == PATIENT_DEK,
            )
            async with self.db.session() as s:
                pending = [tuple(r) for r in await s.execute(
                    select(Patient.tenant_id, Patient.id).where(Patient.status == ERASED, ~covered)
                )]
        else:
            pending = list(patients)
        repaired = 0
        for tenant_id, patient_id in pending:
            async with self.db.session() as s:
                if await _covered(s, tenant_id, patient_id, None):
                    continue
            await self.shred_patient(tenant_id, patient_id, cause=ERASURE)
            repaired += 1
        return repaired

    # -- restored backups --------------------------------------------------------------------
    async def reshred(self, *, tenant_id: str | None = None) -> dict[str, int]:
        """Destroy again every ledger key a restored key-store backup brought back.

        Returns key rows removed per tenant (tenants with ledger rows only).
        """
        removed: dict[str, int] = {}
        for tenant in await self._tenants(tenant_id):
            count = 0
            async for ids in self._key_ids(tenant):
                count += await self.keys.reshred(ids)
            count += await self._reshred_markers(tenant)
            removed[tenant] = count
        return removed

    async def _tenants(self, tenant_id: str | None) -> list[str]:
        query = select(ShredRecord.tenant_id).distinct()
        if tenant_id is not None:
            query = query.where(ShredRecord.tenant_id == tenant_id)
        async with self.db.session() as s:
            return sorted((await s.execute(query)).scalars())

    async def _key_ids(self, tenant_id: str) -> AsyncIterator[list[str]]:
        # Paged by key id so a ledger of millions of object deletes never sits in memory.
        after = ""
        while True:
            async with self.db.session() as s:
                page = [key_id for key_id in (await s.execute(
                    select(ShredRecord.key_id)
                    .where(ShredRecord.tenant_id == tenant_id, ShredRecord.key_id > after)
                    .order_by(ShredRecord.key_id)
                    .limit(_PAGE)
                )).scalars() if key_id is not None]  # `>` never matches NULL; this tells mypy
            if not page:
                return
            yield page
            after = page[-1]

    async def _reshred_markers(self, tenant_id: str) -> int:
        async with self.db.session() as s:
            markers = list((await s.execute(
                select(ShredRecord).where(ShredRecord.tenant_id == tenant_id, ShredRecord.key_id.is_(None))
            )).scalars())
        removed = 0
        for marker in markers:
            if marker.kind == PATIENT_DEK:
                ids = await self.keys.destroy_patient(tenant_id, marker.patient_id)
                recorded = [(ids[0], PATIENT_DEK)] if ids else []
            else:
                one = await self.keys.destroy_object(tenant_id, marker.patient_id, marker.object_id or "")
                ids = [one] if one else []
                recorded = [(one, OBJECT)] if one else []
            if not ids:
                continue
            # destroy_patient leaves the dead object-key rows to a purge; a re-shred takes them now.
            removed += len(ids) + await self.keys.reshred(ids)
            object_id = marker.object_id if marker.kind == OBJECT else None
            async with self.db.transaction() as s:
                await _insert(s, [
                    _row(key_id, kind, tenant_id, marker.patient_id, object_id, marker.destroyed_at, marker.cause)
                    for key_id, kind in recorded
                ])
                await s.execute(delete(ShredRecord).where(ShredRecord.id == marker.id))
        return removed

    # -- reading ------------------------------------------------------------------------
    async def records(self, tenant_id: str, patient_id: str) -> list[ShredRecord]:
        async with self.db.session() as s:
            return list((await s.execute(
                select(ShredRecord)
                .where(ShredRecord.tenant_id == tenant_id, ShredRecord.patient_id == patient_id)
                .order_by(ShredRecord.destroyed_at, ShredRecord.kind.desc(), ShredRecord.key_id)
            )).scalars())


# -- the functions the brief's callers use -------------------------------------------------
async def shred_patient(db: Database, keys: KeyStore, tenant_id: str, patient_id: str, *, cause: str,
                        session: AsyncSession | None = None) -> list[str]:
    return await ShredLedger(db, keys).shred_patient(tenant_id, patient_id, cause=cause, session=session)


async def shred_object(db: Database, keys: KeyStore, tenant_id: str, patient_id: str, object_id: str, *,
                       cause: str, session: AsyncSession | None = None) -> str | None:
    return await ShredLedger(db, keys).shred_object(tenant_id, patient_id, object_id, cause=cause, session=session)


async def reconcile(db: Database, keys: KeyStore, *, patients: Iterable[tuple[str, str]] | None = None) -> int:
    return await ShredLedger(db, keys).reconcile(patients=patients)


async def reshred_all(db: Database, keys: KeyStore) -> int:
    """Re-shred a restored key-store backup from the whole ledger; return key rows removed."""
    return sum((await ShredLedger(db, keys).reshred()).values())


# -- helpers ------------------------------------------------------------------------------
def _check_cause(cause: str) -> None:
    if cause not in CAUSES:
        raise ValueError(f"shred cause must be one of {', '.join(CAUSES)}")


def _row(key_id: str | None, kind: str, tenant_id: str, patient_id: str, object_id: str | None, at, cause: str) -> dict[str, Any]:
    return dict(id=new_id(), key_id=key_id, kind=kind, tenant_id=tenant_id, patient_id=patient_id,
                object_id=object_id, destroyed_at=at, cause=cause)


async def _insert(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    # A retried shred may record an id twice; the first row (and its cause) stands.
    # executemany, not one multi-VALUES statement: SQLite caps bound parameters.
    await session.execute(insert(_ledger).on_conflict_do_nothing(index_elements=["key_id"]), rows)


async def _covered(session: AsyncSession, tenant_id: str, patient_id: str, object_id: str | None) -> bool:
    mine = and_(ShredRecord.tenant_id == tenant_id, ShredRecord.patient_id == patient_id)
    which = ShredRecord.kind == PATIENT_DEK
    if object_id is not None:
        which = or_(which, ShredRecord.object_id == object_id)
    return (await session.execute(select(ShredRecord.id).where(mine, which).limit(1))).first() is not None
