"""The leftover sweep: what crashed writers left, removed after a grace period.

A ``kill -9`` at the wrong moment leaves partial writes (``.part`` files, open S3
multipart uploads), complete blobs whose row never committed, and object keys whose
blob was never stored. The periodic ``storage.sweep_leftovers`` job removes them, on
both storage backends, and never touches a write in progress:

- a blob or key is a leftover only if no registered column references it
  (:data:`vault.leftovers.references.BLOB_REFERENCES`) and its writer's lease
  (``blob_writes``) is absent or expired more than the grace period ago; the lease is
  checked BEFORE the references, because the referencing commit is what ends it;
- partial writes go by their last activity (a ``.part`` file's mtime, a multipart
  upload's newest part), and never while their key's writer holds a lease;
- a leftover's object key is shredded first, in the shred ledger (cause
  ``leftover``), then its blob is deleted, then its lease row.

Every step is idempotent, so a sweep killed half-way is finished by the next one.
Cost: one pass over the store's keys and the key store's object keys per run, in
pages of :data:`PAGE` ids with two indexed queries per page.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, select

from keys.inventory import object_key_owners, object_keys_page
from vault.db import Database, rowcount, utcnow
from vault.leftovers.models import BlobWrite
from vault.leftovers.references import referenced
from vault.shredding.models import LEFTOVER

log = logging.getLogger("vault.leftovers")
PAGE = 500
_leases = cast(Table, BlobWrite.__table__)  # a Table, typed as its base FromClause


@dataclass
class SweepReport:
    partials: int = 0  # temp files and multipart uploads removed
    blobs: int = 0  # complete blobs with no row, deleted
    keys: int = 0  # object keys with no row, shredded in the ledger
    leases: int = 0  # expired writer leases ended

    def as_dict(self) -> dict[str, int]:
        return {"partials": self.partials, "blobs": self.blobs, "keys": self.keys, "leases": self.leases}


class LeftoverSweep:
    def __init__(self, *, db: Database, keys, store, ledger, grace_seconds: float) -> None:
        self.db = db
        self.keys = keys
        self.store = store
        self.ledger = ledger
        self.grace = timedelta(seconds=grace_seconds)

    async def run(self, *, now: datetime | None = None) -> SweepReport:
        report = SweepReport()
        cutoff = (now or utcnow()) - self.grace
        async with self.db.session() as session:
            live = set((await session.execute(select(_leases.c.blob_id).where(_leases.c.lease_until >= cutoff))).scalars())
        report.partials = await self.store.sweep_partials(older_than_s=self.grace.total_seconds(), keep=live)
        async for page in self._expired_leases(cutoff):
            await self._sweep(page, cutoff, report)
        async for page in _pages(self.store.keys()):
            await self._sweep(page, cutoff, report)
        async for page in self._old_object_keys(cutoff):
            await self._sweep(page, cutoff, report)
        if report.partials or report.blobs or report.keys:
            log.info("leftovers removed", extra=report.as_dict())
        return report

    async def _sweep(self, ids: Collection[str], cutoff: datetime, report: SweepReport) -> None:
        async with self.db.session() as session:
            # Leases first: the commit that references a blob deletes its lease, so a blob
            # seen here without a live lease is either referenced below or a leftover.
            leases = {r.blob_id: r for r in await session.execute(select(_leases).where(_leases.c.blob_id.in_(list(ids))))}
            candidates = [i for i in ids if i not in leases or leases[i].lease_until < cutoff]
            kept = await referenced(session, candidates)
        for blob_id in candidates:
            if blob_id in kept:
                if blob_id in leases:  # referenced without the ORM hook: the lease is moot
                    await self._end_lease(blob_id, report)
                continue
            await self._remove(blob_id, leases.get(blob_id), report)

    async def _remove(self, blob_id: str, lease, report: SweepReport) -> None:
        owner = (await object_key_owners(self.keys, [blob_id])).get(blob_id)
        who = (owner.tenant_id, owner.patient_id) if owner else (lease.tenant_id, lease.patient_id) if lease else None
        if who is not None:
            # Shred first, in the ledger: the bytes are unreadable before they go.
            if await self.ledger.shred_object(*who, blob_id, cause=LEFTOVER) is not None:
                report.keys += 1
        if await self.store.exists(blob_id):
            await self.store.delete(blob_id)
            report.blobs += 1
        if lease is not None:
            await self._end_lease(blob_id, report)

    async def _end_lease(self, blob_id: str, report: SweepReport) -> None:
        async with self.db.transaction() as session:
            report.leases += rowcount(await session.execute(delete(_leases).where(_leases.c.blob_id == blob_id)))

    async def _expired_leases(self, cutoff: datetime) -> AsyncIterator[list[str]]:
        after = ""
        while True:
            async with self.db.session() as session:
                page = list((await session.execute(
                    select(_leases.c.blob_id).where(_leases.c.lease_until < cutoff, _leases.c.blob_id > after)
                    .order_by(_leases.c.blob_id).limit(PAGE)
                )).scalars())
            if not page:
                return
            yield page
            after = page[-1]

    async def _old_object_keys(self, cutoff: datetime) -> AsyncIterator[list[str]]:
        # Keys younger than the grace belong to writes that may still be starting.
        after = ""
        while True:
            rows = await object_keys_page(self.keys, after=after, limit=PAGE, created_before=cutoff)
            if not rows:
                return
            yield [r.object_id for r in rows]
            after = rows[-1].object_id


async def _pages(keys: AsyncIterator[str]) -> AsyncIterator[list[str]]:
    page: list[str] = []
    async for key in keys:
        page.append(key)
        if len(page) >= PAGE:
            yield page
            page = []
    if page:
        yield page
