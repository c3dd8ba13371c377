"""The clean-up after a shred: delete the ciphertext and the rows that point at it.

Run by jobs (``lifecycle.purge_patient``, ``lifecycle.purge_media``), never on the
request path. The keys are already gone, so the bytes deleted here are unreadable
anyway; deleting them keeps storage honest (and S3 bills small). Every step is
idempotent: blob deletes succeed for missing blobs, rows are cleared in pages, and a
re-run after a crash picks up where the last page ended.

After a patient's blobs, the final transaction recalls every release of the patient
and notifies the recall webhooks (``patient.erased``), together with the job's
completion, so a re-run never notifies twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vault.consent.models import ConsentRecord, Release
from vault.consent.service import recall
from vault.db import Database, utcnow
from vault.lifecycle.erasure import ERASED_EVENT
from vault.lifecycle.models import Export
from vault.media.models import Media, MediaBlob
from vault.redaction import state as redaction_state
from vault.treatments.models import Treatment

_PAGE = 500
_PARALLEL = 16  # concurrent deletes: S3 round trips overlap, a local disk is not swamped


class Purger:
    def __init__(self, *, db: Database, store, keys, webhooks) -> None:
        self.db = db
        self.store = store
        self.keys = keys
        self.webhooks = webhooks
        self.deleted = 0  # blobs deleted by this purger (the benchmark reads it)

    async def _delete_blobs(self, ids: list[str]) -> None:
        gate = asyncio.Semaphore(_PARALLEL)

        async def one(blob_id: str) -> None:
            async with gate:
                await self.store.delete(blob_id)

        await asyncio.gather(*(one(i) for i in ids))
        self.deleted += len(ids)

    async def purge_patient(self, tenant_id: str, patient_id: str, *, erasure_id: str,
                            finish: Callable[[AsyncSession], Awaitable[None]]) -> int:
        """Delete every blob of an erased patient and the dead object-key rows (in bulk:
        the erasure destroyed only the DEK, which is what made them unreadable); then
        recall and notify. Returns blobs deleted."""
        before = self.deleted
        await self.keys.purge_object_keys(tenant_id, patient_id)
        await self._pages(
            select(MediaBlob.id).where(MediaBlob.patient_id == patient_id, MediaBlob.tenant_id == tenant_id),
            lambda ids: delete(MediaBlob).where(MediaBlob.id.in_(ids)),
        )
        await self._pages(
            select(ConsentRecord.evidence_blob_id).where(ConsentRecord.patient_id == patient_id,
                                                         ConsentRecord.evidence_blob_id.is_not(None)),
            lambda ids: update(ConsentRecord).where(ConsentRecord.evidence_blob_id.in_(ids)).values(evidence_blob_id=None),
        )
        await self._pages(
            select(Release.blob_id).where(Release.patient_id == patient_id, Release.blob_id.is_not(None)),
            lambda ids: update(Release).where(Release.blob_id.in_(ids)).values(blob_id=None),
        )
        await self._pages(
            select(Export.blob_id).where(Export.patient_id == patient_id, Export.blob_id.is_not(None)),
            lambda ids: update(Export).where(Export.blob_id.in_(ids)).values(blob_id=None),
        )
        async with self.db.transaction() as session:
            # Capture metadata was sealed under the destroyed DEK; the rows need not carry it.
            await session.execute(update(Media).where(Media.patient_id == patient_id)
                                  .values(capture=None, treatment_id=None))
            recalled = await recall(session, tenant_id, patient_id, media=None, purposes=None, event_id=erasure_id, now=utcnow())
            await self.webhooks.notify(session, tenant_id, ERASED_EVENT, {
                "patient_id": patient_id, "erasure_id": erasure_id, "release_ids": [r.id for r in recalled],
                "media_ids": sorted({r.media_id for r in recalled}),
            })
            await _forget_treatments_and_consent(session, tenant_id, patient_id)
            await redaction_state.forget(session, patient_id=patient_id)
            await finish(session)
        # secure_delete zeroed the cells; fold the WAL in so no older page image keeps
        # them. Bounded: a reader holding a snapshot defers it to shred.checkpoint.
        await self.db.checkpoint()
        return self.deleted - before

    async def purge_media(self, media_id: str, *, finish: Callable[[AsyncSession], Awaitable[None]]) -> int:
        """Delete the blobs of one deleted media (its keys were shredded by the request)."""
        before = self.deleted
        await self._pages(
            select(MediaBlob.id).where(MediaBlob.media_id == media_id),
            lambda ids: delete(MediaBlob).where(MediaBlob.id.in_(ids)),
        )
        await self._pages(
            select(Release.blob_id).where(or_(Release.media_id == media_id, Release.pair_media_id == media_id),
                                      Release.blob_id.is_not(None)),
            lambda ids: update(Release).where(Release.blob_id.in_(ids)).values(blob_id=None),
        )
        async with self.db.transaction() as session:
            await redaction_state.forget(session, media_id=media_id)
            await finish(session)
        return self.deleted - before

    async def _pages(self, query, forget) -> None:
        """Delete the blobs the query names, a page at a time, then clear their references."""
        while True:
            async with self.db.session() as session:
                ids = list((await session.execute(query.limit(_PAGE))).scalars())
            if not ids:
                return
            await self._delete_blobs(ids)
            async with self.db.transaction() as session:
                await session.execute(forget(ids))


async def _forget_treatments_and_consent(session: AsyncSession, tenant_id: str, patient_id: str) -> None:
    """Delete an erased patient's treatments (their dates stay clear for retention rules)
    and consent events (scopes, purposes, expiry stay clear for the gate): with the DEK
    gone, what is left of them would still say what was done to whom and when.
    Releases stay for the recall bookkeeping, without the consent they relied on."""
    mine = (ConsentRecord.tenant_id == tenant_id) & (ConsentRecord.patient_id == patient_id)
    await session.execute(update(Release).where(Release.tenant_id == tenant_id, Release.patient_id == patient_id)
                          .values(consent_id=None))
    await session.execute(update(ConsentRecord).where(mine).values(withdraws_id=None))
    await session.execute(delete(ConsentRecord).where(mine))
    await session.execute(delete(Treatment).where(Treatment.tenant_id == tenant_id, Treatment.patient_id == patient_id))
