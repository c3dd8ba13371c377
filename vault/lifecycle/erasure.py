"""Erasure by crypto-shredding: a patient at once, or one photo or video.

A patient's erasure runs in three steps, each safe to repeat:

1. **intent** — under the patient's row lock: refused while a legal hold stands;
   otherwise one transaction commits an ``erasure_requests`` row (with the DEK id, read
   first, and the reason sealed under the tenant key) and turns the patient into a
   pseudonymous tombstone (status ``erased``, every personal column and the blind index
   cleared), so every path answers 410 from then on;
2. **shred** — the key store destroys the patient's DEK (and with it every object key
   it wrapped); the shred ledger records it (:class:`vault.shredding.service.ShredLedger`);
3. **finish** — under the row lock again: the signed receipt is stored, the request is
   marked done, and ONE clean-up job is enqueued (``lifecycle.purge_patient``: blob
   deletion, recall webhooks). Only then does the call return.

The request path does no per-object work: one COUNT for the receipt, one job. A crash
after 1 (before or after the shred) leaves a pending request, which
:meth:`ErasureService.reconcile` finishes — the periodic ``lifecycle.reconcile`` job
runs it every minute — as does calling the endpoint again. Calling again after success
returns the stored receipt unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keys.errors import KeyDestroyed
from vault import receipts
from vault.jobs.heartbeat import live_workers
from vault.db.tenancy import owned
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent.models import ConsentRecord, Release
from vault.consent.service import recall, release_view
from vault.db import Database, new_id, utcnow
from vault.errors import LegalHold as LegalHoldError
from vault.errors import NotFound
from vault.jobs import enqueue
from vault.lifecycle.models import BY_REQUEST, DONE, PENDING, ErasureReceipt, ErasureRequest, Export, LegalHold
from vault.lifecycle.reasons import seal_erasure_reason
from vault.lifecycle.responses import ErasureReceiptOut, MediaDeletedOut
from vault.media.models import DELETED as MEDIA_DELETED
from vault.media.models import Media, MediaBlob
from vault.patients.models import ERASED, Patient
from vault.patients.service import PatientService
from vault.shredding.models import ERASURE, OBJECT_DELETE
from vault.shredding.service import ShredLedger

log = logging.getLogger("vault.lifecycle")

PURGE_PATIENT = "lifecycle.purge_patient"
PURGE_MEDIA = "lifecycle.purge_media"
ERASED_EVENT, MEDIA_DELETED_EVENT = "patient.erased", "media.deleted"


def system_actor(tenant_id: str, job: str, request_id: str) -> Actor:
    """The actor a job's audit entries name."""
    return Actor(tenant_id=tenant_id, token_id=f"job:{job}"[:64], role="system", request_id=request_id)


async def active_hold(session: AsyncSession, patient_id: str) -> LegalHold | None:
    hold = await session.get(LegalHold, patient_id)
    return hold if hold is not None and hold.lifted_at is None else None


class ErasureService:
    def __init__(
        self,
        *,
        db: Database,
        audit: AuditLog,
        keys,
        ledger: ShredLedger,
        patients: PatientService,
        webhooks,
        backup_window_days: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.ledger = ledger
        self.patients = patients
        self.webhooks = webhooks
        self.backup_window_days = backup_window_days
        self.clock = clock

    # -- a patient -----------------------------------------------------------------------
    async def erase(self, actor: Actor, patient_id: str, *, reason: str, origin: str = BY_REQUEST,
                    sweep_id: str | None = None) -> ErasureReceiptOut:
        """Erase the patient and return the signed receipt ``{"receipt", "signature"}``;
        the same receipt on every later call. ``LegalHold`` while a hold stands."""
        stored = await self._stored_receipt(actor, patient_id)
        if stored is not None:
            await self.audit.record(AuditEvent.of(actor, "patient.erase", outcome="already_erased", patient_id=patient_id))
            return stored
        dek_id = await self._dek_id(actor.tenant_id, patient_id)
        held = False
        async with self.db.transaction() as session:
            patient = await self.patients.load(session, actor, patient_id, lock=True, allow_erased=True)
            request = (await session.execute(
                select(ErasureRequest).where(ErasureRequest.patient_id == patient.id)
            )).scalar_one_or_none()
            if request is None:
                if await active_hold(session, patient.id) is not None:
                    held = True
                else:
                    request = ErasureRequest(id=new_id(), tenant_id=patient.tenant_id, patient_id=patient.id, state=PENDING,
                                             origin=origin, sweep_id=sweep_id, dek_id=dek_id, requested_by=actor.token_id,
                                             requested_at=self.clock())
                    request.reason = await seal_erasure_reason(self.keys, patient.tenant_id, patient.id, request.id, reason)
                    session.add(request)
                    # Every path answers 410 from here on, even if the shred below is
                    # interrupted: the key never outlives a committed intent for long.
                    _tombstone(patient, request.requested_at)
                    await session.flush()
                    await self.audit.append(session, AuditEvent.of(actor, "patient.erasure_request", patient_id=patient.id,
                                                                   erasure_id=request.id, origin=origin))
        if held:
            # The refusal is audited on its own: the transaction above wrote nothing.
            await self.audit.record(AuditEvent.of(actor, "patient.erasure_request", outcome="legal_hold", patient_id=patient_id))
            raise LegalHoldError()
        assert request is not None  # None only when held, which raised above
        return await self._complete(actor, request)

    async def _stored_receipt(self, actor: Actor, patient_id: str) -> ErasureReceiptOut | None:
        async with self.db.session() as session:
            row = (await session.execute(
                select(ErasureReceipt).where(ErasureReceipt.patient_id == patient_id, ErasureReceipt.tenant_id == actor.tenant_id)
            )).scalar_one_or_none()
        return _signed(row) if row is not None else None

    async def _dek_id(self, tenant_id: str, patient_id: str) -> str | None:
        try:
            return (await self.keys.patient_key(tenant_id, patient_id)).dek_id
        except KeyDestroyed:
            return None

    async def _complete(self, actor: Actor, request: ErasureRequest) -> ErasureReceiptOut:
        """Steps 2 and 3 for a committed request; idempotent."""
        tenant_id, patient_id = request.tenant_id, request.patient_id
        destroyed = await self.ledger.shred_patient(tenant_id, patient_id, cause=ERASURE)
        # The receipt names the DEK: destroying it made every object key it wrapped
        # unreadable at once; object_count says how many objects that covered.
        dek_ids = [request.dek_id] if request.dek_id else destroyed[:1]
        patient_ref = await receipts.patient_ref(self.keys, tenant_id, patient_id)
        # Read before the transaction: the dates come from the epochs' recorded schedule,
        # and only a running worker destroys epochs on it.
        schedule = await self.keys.erasure_schedule(tenant_id)
        jobs_running = await live_workers(self.db) > 0
        async with self.db.transaction() as session:
            patient = (await session.execute(
                select(Patient).where(Patient.id == patient_id, Patient.tenant_id == tenant_id).with_for_update()
            )).scalar_one()
            existing = await session.get(ErasureReceipt, patient_id)
            if existing is not None:
                return _signed(existing)
            now = self.clock()
            _tombstone(patient, request.requested_at)
            document = receipts.build_erasure_receipt(
                tenant_id=tenant_id, patient_ref=patient_ref, destroyed_key_ids=dek_ids,
                object_count=await object_count(session, patient_id), requested_at=request.requested_at,
                completed_at=max(now, request.requested_at), legal_hold_checked=True,
                backup_window_days=self.backup_window_days, schedule=schedule, jobs_running=jobs_running,
            )
            signed = await receipts.sign_receipt(self.keys, document)
            session.add(ErasureReceipt(patient_id=patient_id, tenant_id=tenant_id, receipt_id=document["receipt_id"],
                                       document=_canonical(signed["receipt"]), signature=signed["signature"], created_at=now))
            row = await session.get(ErasureRequest, request.id, with_for_update=True)
            assert row is not None, "a committed erasure request is never deleted"
            row.state, row.completed_at = DONE, now
            # The hold's reason was sealed under the DEK just destroyed: nothing to keep.
            await session.execute(delete(LegalHold).where(LegalHold.patient_id == patient_id))
            await enqueue(session, PURGE_PATIENT, {"tenant_id": tenant_id, "patient_id": patient_id, "erasure_id": request.id},
                          dedupe_key=f"{PURGE_PATIENT}:{patient_id}")
            await self.audit.append(session, AuditEvent.of(actor, "patient.erase", patient_id=patient_id, erasure_id=request.id,
                                                           receipt_id=document["receipt_id"]))
        self.keys.evict(tenant_id, patient_id)
        # The tombstone cleared the blind index (secure_delete zeroed the cell); fold the
        # WAL in so no older page image keeps it. Bounded wait: a reader holding a
        # snapshot defers it to the shred.checkpoint job.
        await self.db.checkpoint()
        return ErasureReceiptOut.of(signed)

    async def reconcile(self, *, request_id: str) -> int:
        """Finish every erasure whose intent was committed but which did not complete (a
        crash or a lost connection after the shred); return how many were finished."""
        async with self.db.session() as session:
            pending = list((await session.execute(
                select(ErasureRequest).where(ErasureRequest.state == PENDING).order_by(ErasureRequest.requested_at).limit(500)
            )).scalars())
        finished = 0
        for request in pending:
            actor = system_actor(request.tenant_id, "lifecycle.reconcile", request_id)
            try:
                await self._complete(actor, request)
                finished += 1
            except Exception:
                log.exception("could not finish an erasure", extra={"erasure_id": request.id})
        # Patients marked erased without a ledger row for their DEK (another path's crash).
        await self.ledger.reconcile()
        return finished

    async def receipt_of(self, tenant_id: str, patient_id: str) -> ErasureReceiptOut | None:
        async with self.db.session() as session:
            row = (await session.execute(
                select(ErasureReceipt).where(ErasureReceipt.patient_id == patient_id, ErasureReceipt.tenant_id == tenant_id)
            )).scalar_one_or_none()
        return _signed(row) if row is not None else None

    async def finality(self, actor: Actor, receipt_id: str) -> dict[str, Any]:
        """The signed finality attestation of one of this tenant's receipts (another
        tenant's receipt is 404, like every other resource)."""
        async with self.db.session() as session:
            row = (await session.execute(
                select(ErasureReceipt).where(ErasureReceipt.receipt_id == receipt_id, ErasureReceipt.tenant_id == actor.tenant_id)
            )).scalar_one_or_none()
        if row is None:
            raise NotFound("no such erasure receipt")
        attestation = await receipts.finality_attestation(self.keys, json.loads(row.document), now=self.clock())
        await self.audit.record(AuditEvent.of(actor, "erasure.finality", receipt_id=receipt_id,
                                              final=str(attestation["finality"]["final"]).lower()))
        return attestation

    # -- one photo or video ---------------------------------------------------------------
    async def delete_media(self, actor: Actor, media_id: str) -> MediaDeletedOut:
        """Shred every rendition of one media (and its releases' own renditions), mark it
        deleted, recall its releases; the bytes go in a ``lifecycle.purge_media`` job."""
        async with self.db.session() as session:
            media = await self._media(session, actor, media_id)
            await self.patients.load(session, actor, media.patient_id)  # erased -> 410
            held = await active_hold(session, media.patient_id) is not None
            blob_ids = [] if held else await _media_blob_ids(session, media.id)
        if held:
            await self.audit.record(AuditEvent.of(actor, "media.delete", outcome="legal_hold", patient_id=media.patient_id,
                                                  media_id=media.id))
            raise LegalHoldError()
        destroyed = []
        shred_at = utcnow()  # the key store's clock: renewals are compared with it
        for blob_id in blob_ids:
            key_id = await self.ledger.shred_object(media.tenant_id, media.patient_id, blob_id, cause=OBJECT_DELETE)
            if key_id is not None:
                destroyed.append(key_id)
        now = self.clock()
        async with self.db.transaction() as session:
            media = await self._media(session, actor, media_id, lock=True)
            await self.patients.load(session, actor, media.patient_id, lock=True)
            already = media.status == MEDIA_DELETED
            media.status, media.capture, media.updated_at = MEDIA_DELETED, None, now
            recalled = await recall(session, media.tenant_id, media.patient_id, media=[media.id], purposes=None,
                                    event_id=media.id, now=now)
            if not already:
                await self.webhooks.notify(session, media.tenant_id, MEDIA_DELETED_EVENT, {
                    "patient_id": media.patient_id, "media_id": media.id, "release_ids": [r.id for r in recalled]})
                await enqueue(session, PURGE_MEDIA, {"tenant_id": media.tenant_id, "media_id": media.id},
                              dedupe_key=f"{PURGE_MEDIA}:{media.id}")
            await self.audit.append(session, AuditEvent.of(actor, "media.delete", patient_id=media.patient_id, media_id=media.id,
                                                           keys=str(len(destroyed)), recalled=str(len(recalled))))
        promise = receipts.object_promise(
            await self.keys.renewal_schedule(media.tenant_id, media.patient_id, since=shred_at),
            jobs_running=await live_workers(self.db) > 0)
        return MediaDeletedOut(media_id=media.id, status=MEDIA_DELETED, destroyed_key_ids=destroyed,
                               recall=[await release_view(self.keys, r) for r in recalled],
                               irrecoverable_after=promise["irrecoverable_after"], no_date_reason=promise["no_date_reason"])

    @staticmethod
    async def _media(session: AsyncSession, actor: Actor, media_id: str, *, lock: bool = False) -> Media:
        return await owned(session, Media, media_id, actor.tenant_id, lock=lock, what="media")


async def _media_blob_ids(session: AsyncSession, media_id: str) -> list[str]:
    renditions = (await session.execute(select(MediaBlob.id).where(MediaBlob.media_id == media_id))).scalars().all()
    released = (await session.execute(
        select(Release.blob_id).where(or_(Release.media_id == media_id, Release.pair_media_id == media_id),
                                      Release.blob_id.is_not(None))
    )).scalars().all()
    return sorted(set(renditions) | {blob_id for blob_id in released if blob_id is not None})  # None excluded in SQL too


async def object_count(session: AsyncSession, patient_id: str) -> int:
    """Every sealed blob of the patient, in one query: renditions, consent evidence,
    release renditions, exports."""
    parts = (
        select(func.count()).select_from(MediaBlob).where(MediaBlob.patient_id == patient_id),
        select(func.count()).select_from(ConsentRecord).where(ConsentRecord.patient_id == patient_id,
                                                               ConsentRecord.evidence_blob_id.is_not(None)),
        select(func.count()).select_from(Release).where(Release.patient_id == patient_id, Release.blob_id.is_not(None)),
        select(func.count()).select_from(Export).where(Export.patient_id == patient_id, Export.blob_id.is_not(None)),
    )
    total: ColumnElement[Any] = parts[0].scalar_subquery()
    for part in parts[1:]:
        total = total + part.scalar_subquery()
    return int((await session.execute(select(total))).scalar_one())


def _tombstone(patient: Patient, now: datetime) -> None:
    """What stays of an erased patient: a random id, the tenant, the status and when."""
    patient.status, patient.erased_at = ERASED, patient.erased_at or now
    patient.ref_index = None
    patient.external_ref = patient.display_name = patient.date_of_birth = patient.notes = None


def _canonical(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _signed(row: ErasureReceipt) -> ErasureReceiptOut:
    """The stored receipt as stored: the signed document exactly, never re-modelled."""
    return ErasureReceiptOut(receipt=json.loads(row.document), signature=row.signature)
