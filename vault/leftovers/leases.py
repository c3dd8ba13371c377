"""Writer leases on blobs being written, so the leftover sweep never takes a write
that is still going on.

:meth:`WriteLeases.begin` commits a ``blob_writes`` row BEFORE the blob's object key
is created (``SealedBlobs._new``), so no key or blob of a live write exists without
it. While the task that started the write runs, a heartbeat extends the lease every
third of it; an upload that lasts hours keeps its lease for hours. The lease ends

- in the same transaction that commits the row referencing the blob: an ORM
  ``after_flush`` hook deletes the lease of every blob id a registered column
  (:data:`vault.leftovers.references.BLOB_REFERENCES`) gets, so a rolled-back
  transaction keeps the lease;
- on a rolled-back write, after its key is shredded (:meth:`WriteLeases.end`);
- or by itself: when the writing task has ended without a referencing row (a crash, a
  bug) nobody extends it, it expires, and after the grace the sweep removes the blob,
  shreds its key in the ledger and deletes the lease.

Write and commit from the same task (or its parent): the heartbeat follows the task
that called ``begin``, and stops when that task is done; the lease still runs for
its full length after that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, delete, event, select, update
from sqlalchemy.orm import Session

from vault.db import Database, utcnow
from vault.leftovers.models import BlobWrite
from vault.leftovers.references import BLOB_REFERENCES

log = logging.getLogger("vault.leftovers")
_leases = cast(Table, BlobWrite.__table__)  # a Table, typed as its base FromClause


class WriteLeases:
    def __init__(self, db: Database, *, lease_seconds: float, name: str | None = None) -> None:
        if lease_seconds <= 0:
            raise ValueError("a writer lease must be positive")
        self.db = db
        self.lease = timedelta(seconds=lease_seconds)
        self.name = (name or f"{socket.gethostname()[:60]}:{os.getpid()}")[:100]
        self._held: dict[str, asyncio.Task | None] = {}
        self._beat: asyncio.Task | None = None

    async def begin(self, blob_id: str, tenant_id: str, patient_id: str) -> None:
        await self.begin_many([blob_id], tenant_id, patient_id)

    async def begin_many(self, blob_ids: list[str], tenant_id: str, patient_id: str) -> None:
        """Leases on several blobs of one patient about to be written, in one commit."""
        if not blob_ids:
            return
        now = utcnow()
        async with self.db.transaction() as session:
            await session.execute(_leases.insert(), [
                {"blob_id": blob_id, "tenant_id": tenant_id, "patient_id": patient_id, "writer": self.name,
                 "started_at": now, "lease_until": now + self.lease} for blob_id in blob_ids])
        task = asyncio.current_task()
        for blob_id in blob_ids:
            self._held[blob_id] = task
        if self._beat is None or self._beat.done():
            self._beat = asyncio.create_task(self._run(), name="blob-write-leases")

    async def end(self, blob_id: str) -> None:
        """A rolled-back write, once its key is shredded: nothing left to guard."""
        self._held.pop(blob_id, None)
        async with self.db.transaction() as session:
            await session.execute(delete(_leases).where(_leases.c.blob_id == blob_id))

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    async def _run(self) -> None:
        interval = self.lease.total_seconds() / 3
        while self._held:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except Exception as exc:  # a database hiccup: the next beat tries again
                log.warning("writer lease heartbeat failed", extra={"exc_type": type(exc).__name__})

    async def tick(self) -> None:
        """Extend the leases of writes whose task still runs; forget the others and
        those whose lease a committed referencing row ended."""
        for blob_id, task in list(self._held.items()):
            if task is not None and task.done():
                del self._held[blob_id]
        ids = list(self._held)
        if not ids:
            return
        async with self.db.transaction() as session:
            await session.execute(update(_leases).where(_leases.c.blob_id.in_(ids)).values(lease_until=utcnow() + self.lease))
            alive = set((await session.execute(select(_leases.c.blob_id).where(_leases.c.blob_id.in_(ids)))).scalars())
        for blob_id in set(ids) - alive:
            self._held.pop(blob_id, None)

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
            self._beat = None


@event.listens_for(Session, "after_flush")
def _end_referenced_leases(session: Session, flush_context) -> None:
    """A blob id written into a registered column ends that blob's lease in the same
    transaction: from the commit on, the reference keeps the blob."""
    ids: set[str] = set()
    for obj in (*session.new, *session.dirty):
        for model, column in BLOB_REFERENCES:
            if isinstance(obj, model):
                value = getattr(obj, column, None)
                if isinstance(value, str):
                    ids.add(value)
    if ids:
        session.connection().execute(delete(_leases).where(_leases.c.blob_id.in_(sorted(ids))))
