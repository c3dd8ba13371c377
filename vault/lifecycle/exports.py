"""Subject-access exports: requested by the DPO, built by the ``lifecycle.build_export``
job into one sealed blob of the patient (a ZIP, see :mod:`vault.lifecycle.archive`),
downloaded once, then shredded — or shredded unread when it expires
(``VAULT_EXPORT_TTL_HOURS``, the ``lifecycle.expire_exports`` job).

A restricted patient can still be exported: the export goes to the patient (art. 15),
not to a third party. An erased patient's exports answer 410 like every other path.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from vault import idempotent
from vault.db.tenancy import owned
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent.models import ConsentRecord, Release
from vault.consent.service import release_view
from vault.db import Database, new_id, utcnow
from vault.errors import Gone, NotReady
from vault.jobs import enqueue
from vault.lifecycle import patient_page
from vault.lifecycle.archive import ExtraFile, MediaFile, zip_stream
from vault.lifecycle.erasure import system_actor
from vault.lifecycle.responses import ExportOut
from vault.lifecycle.models import (
    EXPORT_DOWNLOADED,
    EXPORT_EXPIRED,
    EXPORT_FAILED,
    EXPORT_PENDING,
    EXPORT_READY,
    EXPORT_RUNNING,
    Export,
)
from vault.media.files import extension
from vault.media.models import DELETED, ORIGINAL, READY, THUMB_256, Media, MediaBlob
from vault.patients.models import ERASED, Patient
from vault.sealed import SealedRef
from vault.treatments.models import Treatment

BUILD_EXPORT = "lifecycle.build_export"
FORMAT = "vault-subject-access-export/1"
_PROGRESS_EVERY = 0.5  # seconds between progress writes
_AUDIT_PAGE = 1000


@dataclass(frozen=True)
class Download:
    export_id: str
    ref: SealedRef
    filename: str
    claimed: bool


class ExportService:
    def __init__(self, *, db: Database, audit: AuditLog, keys, sealed, patients, treatments, media, consents,
                 ttl: timedelta) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.treatments = treatments
        self.media = media
        self.consents = consents
        self.ttl = ttl

    # -- requests and status ----------------------------------------------------------------
    async def request(self, actor: Actor, patient_id: str, *, idempotency_key: str | None = None) -> ExportOut:
        """Start an export. A replayed ``Idempotency-Key`` answers with the first export's status."""
        key = await idempotent.claim(self.keys, actor, f"export|{patient_id}", idempotency_key, {})
        async with self.db.transaction() as session:
            patient = await self.patients.load(session, actor, patient_id, lock=True)  # serialises retries too
            if (first := await idempotent.replayed(session, key)) is not None:
                export = await session.get_one(Export, first)
                await self.audit.append(session, AuditEvent.of(actor, "export.request.replay", patient_id=patient.id,
                                                               export_id=export.id))
                return view(export)
            export = Export(id=new_id(), tenant_id=patient.tenant_id, patient_id=patient.id, status=EXPORT_PENDING,
                            requested_by=actor.token_id, created_at=utcnow())
            session.add(export)
            idempotent.remember(session, key, export.id)
            await session.flush()
            await enqueue(session, BUILD_EXPORT, {"export_id": export.id}, dedupe_key=f"{BUILD_EXPORT}:{export.id}")
            await self.audit.append(session, AuditEvent.of(actor, "export.request", patient_id=patient.id, export_id=export.id))
        return view(export)

    async def _load(self, session: AsyncSession, actor: Actor, export_id: str, *, lock: bool = False) -> Export:
        export = await owned(session, Export, export_id, actor.tenant_id, lock=lock, what="export")
        await self.patients.load(session, actor, export.patient_id)  # erased -> 410
        return export

    async def status(self, actor: Actor, export_id: str) -> ExportOut:
        async with self.db.session() as session:
            export = await self._load(session, actor, export_id)
        await self.audit.record(AuditEvent.of(actor, "export.read", patient_id=export.patient_id, export_id=export.id))
        return view(export)

    # -- the one download -------------------------------------------------------------------
    async def open_download(self, actor: Actor, export_id: str, *, claim: bool = True) -> Download:
        async with self.db.transaction() as session:
            export = await self._load(session, actor, export_id, lock=True)
            if export.status in (EXPORT_DOWNLOADED, EXPORT_EXPIRED):
                raise Gone(f"this export was {export.status}", details={"status": export.status})
            if export.status != EXPORT_READY or export.blob_id is None:
                raise NotReady("the export is not ready", details={"status": export.status})
            if claim:
                export.status, export.downloaded_at = EXPORT_DOWNLOADED, utcnow()
            await self.audit.append(session, AuditEvent.of(actor, "export.download" if claim else "export.check",
                                                           patient_id=export.patient_id, export_id=export.id))
        ref = SealedRef(id=export.blob_id, tenant_id=export.tenant_id, patient_id=export.patient_id,
                        plain_size=export.plain_size or 0)
        return Download(export_id=export.id, ref=ref, filename=f"subject-access-{secrets.token_hex(8)}.zip", claimed=claim)

    async def stream(self, download: Download) -> AsyncIterator[bytes]:
        return await self.sealed.stream(download.ref)

    async def finish_download(self, download: Download) -> None:
        """After the one download (complete or not) the archive is shredded."""
        if download.claimed:
            await self._shred(download.export_id, download.ref)

    async def _shred(self, export_id: str, ref: SealedRef) -> None:
        await self.sealed.destroy(ref)
        async with self.db.transaction() as session:
            await session.execute(update(Export).where(Export.id == export_id, Export.blob_id == ref.id).values(blob_id=None))

    async def expire(self, *, now: datetime | None = None) -> int:
        """Shred ready exports past their expiry, and any downloaded one whose shred a
        crash interrupted."""
        now = now or utcnow()
        async with self.db.session() as session:
            rows = (await session.execute(
                select(Export).where(Export.blob_id.is_not(None), or_(
                    (Export.status == EXPORT_READY) & (Export.expires_at <= now),
                    Export.status.in_((EXPORT_DOWNLOADED, EXPORT_EXPIRED, EXPORT_FAILED)),
                )).limit(500)
            )).scalars().all()
        for export in rows:
            if export.blob_id is None:  # excluded by the query; narrows the type
                continue
            ref = SealedRef(id=export.blob_id, tenant_id=export.tenant_id, patient_id=export.patient_id, plain_size=0)
            async with self.db.transaction() as session:
                await session.execute(update(Export).where(Export.id == export.id, Export.status == EXPORT_READY)
                                      .values(status=EXPORT_EXPIRED))
            await self._shred(export.id, ref)
        return len(rows)

    # -- building (the job) -----------------------------------------------------------------
    async def build(self, export_id: str, *, job_id: str, finish: Callable[[AsyncSession], Awaitable[None]]) -> None:
        """Build the ZIP into a sealed blob; idempotent (a finished export is left alone)."""
        async with self.db.transaction() as session:
            export = await session.get(Export, export_id, with_for_update=True)
            if export is None or export.status not in (EXPORT_PENDING, EXPORT_RUNNING):
                return
            patient = await session.get(Patient, export.patient_id)
            assert patient is not None, "exports.patient_id is a foreign key; patients are tombstoned, never deleted"
            if patient.status == ERASED:
                export.status, export.error = EXPORT_FAILED, "patient_erased"
                await finish(session)
                return
            export.status, export.started_at, export.progress, export.items_done = EXPORT_RUNNING, utcnow(), 0.0, 0
        actor = system_actor(export.tenant_id, BUILD_EXPORT, f"job-{job_id}")
        files, document = await self._gather(actor, patient)
        extras, thumbnails, forms = await self._extras(patient, files)
        export.items_total = sum(1 for f in files if f.ref is not None) + len(extras) + 2
        progress = _Progress(self.db, export.id, export.items_total)
        await progress.write(force=True)
        generated_at = utcnow()

        def manifest(done: list[MediaFile]) -> dict[str, Any]:
            document["media"] = [{**f.view, "file": f.path, "sha256": f.sha256,
                                  "size_bytes": f.ref.plain_size if f.ref else None} for f in done]
            for consent in document["consents"]:
                if consent["id"] in forms:
                    consent["evidence_file"] = forms[consent["id"]]
            return document

        def index(document: dict[str, Any]) -> bytes:
            return patient_page.render(document, thumbnails=thumbnails, forms=forms)

        chunks = zip_stream(self.sealed, files, manifest=manifest, generated_at=generated_at, on_file=progress.step,
                            extras=tuple(extras), index=index)
        ref = await self.sealed.put_stream(export.tenant_id, export.patient_id, chunks)
        kept = ready = False
        try:
            async with self.db.transaction() as session:
                row = await session.get(Export, export.id, with_for_update=True)
                patient = await session.get(Patient, export.patient_id)
                assert row is not None and patient is not None, "exports and patients are never deleted"
                now = utcnow()
                if row.status == EXPORT_RUNNING and patient.status != ERASED:
                    row.status, row.blob_id, row.plain_size = EXPORT_READY, ref.id, ref.plain_size
                    row.progress, row.items_done, row.ready_at, row.expires_at = 1.0, row.items_total, now, now + self.ttl
                    await self.audit.append(session, AuditEvent.of(actor, "export.build", patient_id=export.patient_id,
                                                                   export_id=export.id, media=str(len(files))))
                    ready = True
                elif row.status == EXPORT_RUNNING:
                    row.status, row.error = EXPORT_FAILED, "patient_erased"
                await finish(session)
            kept = ready
        finally:
            if not kept:  # erased meanwhile, or the commit failed: no archive outlives its row
                await self.sealed.destroy(ref)

    async def fail(self, export_id: str, *, error: str) -> None:
        """The job's last attempt failed: say so (no partial archive is ever kept)."""
        async with self.db.transaction() as session:
            unfinished = Export.status.in_((EXPORT_PENDING, EXPORT_RUNNING))
            await session.execute(update(Export).where(Export.id == export_id, unfinished)
                                  .values(status=EXPORT_FAILED, error=error[:100]))

    async def _gather(self, actor: Actor, patient: Patient) -> tuple[list[MediaFile], dict[str, Any]]:
        async with self.db.session() as session:
            treatments = (await session.execute(
                select(Treatment).where(Treatment.patient_id == patient.id).order_by(Treatment.performed_on, Treatment.id)
            )).scalars().all()
            media = (await session.execute(
                select(Media, MediaBlob)
                .outerjoin(MediaBlob, (MediaBlob.media_id == Media.id) & (MediaBlob.rendition == ORIGINAL))
                .where(Media.patient_id == patient.id, Media.tenant_id == patient.tenant_id, Media.status != DELETED)
                .order_by(Media.created_at, Media.id)
            )).all()
            releases = (await session.execute(
                select(Release).where(Release.patient_id == patient.id).order_by(Release.created_at, Release.id)
            )).scalars().all()
        files = []
        for m, blob in media:
            ref = None
            if blob is not None and m.status == READY:
                ref = SealedRef(id=blob.id, tenant_id=blob.tenant_id, patient_id=blob.patient_id, plain_size=blob.plain_size)
            files.append(MediaFile(view=(await self.media.view(m)).model_dump(), ref=ref, modified=m.created_at))
        document = {
            "format": FORMAT,
            "generated_at": utcnow().isoformat(),
            "patient": (await self.patients.view(patient)).as_dict(),
            "treatments": [(await self.treatments.view(t)).as_dict() for t in treatments],
            "consents": [c.model_dump() for c in await self.consents.history(actor, patient.id)],
            "releases": [(await release_view(self.keys, r)).model_dump() for r in releases],
            "audit": await self._audit_entries(patient),
        }
        return files, document

    async def _extras(self, patient: Patient, files: list[MediaFile]) -> tuple[list[ExtraFile], dict[str, str], dict[str, str]]:
        """The ready media's 256 px thumbnails and the signed consent forms, for index.html."""
        ready = [f.view["id"] for f in files if f.ref is not None]
        async with self.db.session() as session:
            thumbs = (await session.execute(select(MediaBlob).where(
                MediaBlob.media_id.in_(ready), MediaBlob.rendition == THUMB_256))).scalars().all() if ready else []
            consents = (await session.execute(select(ConsentRecord).where(
                ConsentRecord.patient_id == patient.id, ConsentRecord.tenant_id == patient.tenant_id,
                ConsentRecord.evidence_blob_id.is_not(None)).order_by(ConsentRecord.recorded_at, ConsentRecord.id))).scalars().all()
        extras, thumbnails, forms = [], {}, {}
        for blob in thumbs:
            path = thumbnails[blob.media_id] = f"thumbnails/{blob.media_id}.jpg"
            extras.append(ExtraFile(path=path, modified=blob.created_at,
                                    ref=SealedRef(id=blob.id, tenant_id=blob.tenant_id, patient_id=blob.patient_id,
                                                  plain_size=blob.plain_size)))
        for c in consents:
            if c.evidence_blob_id is None:
                continue
            path = forms[c.id] = f"consents/{c.id}.{extension(c.evidence_mime)}"
            extras.append(ExtraFile(path=path, modified=c.recorded_at, ref=SealedRef(
                id=c.evidence_blob_id, tenant_id=c.tenant_id, patient_id=c.patient_id, plain_size=c.evidence_size or 0)))
        return extras, thumbnails, forms

    async def _audit_entries(self, patient: Patient) -> list[dict[str, Any]]:
        entries, after = [], 0
        while True:
            rows = await self.audit.entries(patient.tenant_id, after_seq=after, limit=_AUDIT_PAGE, target=patient.id)
            entries += [{"seq": r.seq, "at": r.at.isoformat(), "actor": r.actor, "role": r.role, "action": r.action,
                         "outcome": r.outcome} for r in rows]
            if len(rows) < _AUDIT_PAGE:
                return entries
            after = rows[-1].seq


def view(export: Export) -> ExportOut:
    return ExportOut(
        id=export.id,
        patient_id=export.patient_id,
        status=export.status,
        progress=round(export.progress or 0.0, 3),
        items_done=export.items_done or 0,
        items_total=export.items_total or 0,
        size=export.plain_size,
        error=export.error,
        created_at=export.created_at.isoformat(),
        ready_at=export.ready_at.isoformat() if export.ready_at else None,
        expires_at=export.expires_at.isoformat() if export.expires_at else None,
        downloaded_at=export.downloaded_at.isoformat() if export.downloaded_at else None,
    )


class _Progress:
    """Writes progress at most every half second (and at the start)."""

    def __init__(self, db: Database, export_id: str, total: int) -> None:
        self.db = db
        self.export_id = export_id
        self.total = max(total, 1)
        self.done = 0
        self.written_at = 0.0

    async def step(self) -> None:
        self.done += 1
        await self.write()

    async def write(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self.written_at < _PROGRESS_EVERY:
            return
        self.written_at = time.monotonic()
        async with self.db.transaction() as session:
            await session.execute(
                update(Export).where(Export.id == self.export_id, Export.status == EXPORT_RUNNING)
                .values(items_done=self.done, items_total=self.total, progress=min(self.done / self.total, 0.99))
            )
