"""DICOM exports: a photo sent to the clinic's PACS as a DICOM VL Photographic Image.

``request`` (dpo, practitioner) checks the photo (the actor's tenant, not erased or
deleted, a ready photo, the patient not restricted) and writes the export row and its
``dicom.send_export`` job in one transaction. The job (:meth:`DicomExports.send`)
unseals the patient's hospital number and name in memory, has a decoder worker build the
file (:meth:`vault.media.processing.PhotoPipeline.dicom`) and sends it by STOW-RS
(:mod:`vault.dicom.stow`); a failure is kept on the row (``error``) and retried with
backoff; when the last attempt fails, or the job goes dead, the export says ``failed``.
Request, status reads, the send and the final failure are audited.

Study and series are per treatment (series per treatment and phase), their UIDs derived
from the ids under a tenant purpose key (:mod:`vault.dicom.uids`), so the PACS groups a
treatment's photos while the UIDs reveal no vault id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import select

from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id, utcnow
from vault.db.tenancy import owned
from vault.dicom import uids
from vault.dicom.models import FAILED, PENDING, SENDING, SENT, DicomExport
from vault.dicom.responses import DicomExportOut, Status
from vault.dicom.stow import DicomWebTarget, StowFailed
from vault.errors import Conflict, NotReady, VaultError
from vault.jobs import enqueue
from vault.lifecycle.erasure import system_actor
from vault.media.models import DELETED, ORIGINAL, PHASES, PHOTO, READY, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.media.service import MediaService, sealed_ref
from vault.patients.models import ERASED, RESTRICTED, Patient
from vault.patients.service import PatientService
from vault.sealed import SealedBlobs
from vault.treatments.models import Treatment
from vault.treatments.service import TreatmentService

SEND_DICOM = "dicom.send_export"
_LO = 64  # a DICOM LO value (Patient ID) holds at most 64 characters


class DicomRefused(Exception):
    """This export can never succeed as it stands (no retry); ``code`` says why."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def failure_code(exc: BaseException) -> str:
    """A short, safe code for the export's ``error`` (never a message that could hold data)."""
    if isinstance(exc, StowFailed | DicomRefused):
        return exc.code
    if isinstance(exc, VaultError):
        return exc.code
    return type(exc).__name__[:60]


class DicomExports:
    def __init__(self, *, db: Database, audit: AuditLog, keys, sealed: SealedBlobs, patients: PatientService,
                 treatments: TreatmentService, media: MediaService, pipeline: PhotoPipeline,
                 target: DicomWebTarget | None) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.treatments = treatments
        self.media = media
        self.pipeline = pipeline
        self.target = target

    # -- requests and status ----------------------------------------------------------------
    async def request(self, actor: Actor, media_id: str) -> DicomExportOut:
        async with self.db.transaction() as session:
            media = await self.media.load(session, actor, media_id)  # tenant (404), erased or deleted (410)
            patient = await self.patients.load(session, actor, media.patient_id, lock=True)
            if media.kind != PHOTO:
                raise Conflict("only photos can be sent as DICOM images", details={"kind": media.kind})
            if media.status != READY:
                raise NotReady(details={"status": media.status})
            if patient.status == RESTRICTED:
                raise Conflict("the patient's processing is restricted", details={"status": RESTRICTED})
            if self.target is None:
                raise Conflict("DICOM export is not configured", details={"setting": "VAULT_DICOMWEB_URL"})
            now = utcnow()
            row = DicomExport(id=new_id(), tenant_id=media.tenant_id, patient_id=media.patient_id, media_id=media.id,
                              status=PENDING, attempts=0, requested_by=actor.token_id, created_at=now, updated_at=now)
            session.add(row)
            await session.flush()
            await enqueue(session, SEND_DICOM, {"export_id": row.id}, dedupe_key=f"{SEND_DICOM}:{row.id}")
            await self.audit.append(session, AuditEvent.of(actor, "dicom_export.request", patient_id=media.patient_id,
                                                           media_id=media.id, dicom_export_id=row.id))
        return view(row)

    async def status(self, actor: Actor, export_id: str) -> DicomExportOut:
        async with self.db.session() as session:
            row = await owned(session, DicomExport, export_id, actor.tenant_id, what="DICOM export")
            await self.patients.load(session, actor, row.patient_id)  # erased -> 410
        await self.audit.record(AuditEvent.of(actor, "dicom_export.read", patient_id=row.patient_id,
                                              media_id=row.media_id, dicom_export_id=row.id))
        return view(row)

    # -- sending (the job) ------------------------------------------------------------------
    async def send(self, export_id: str, *, job_id: str, finish) -> None:
        """Build and send; idempotent (a sent or failed export is left alone, and the same
        photo always has the same SOP Instance UID, so a resend replaces, never doubles)."""
        async with self.db.transaction() as session:
            row = await session.get(DicomExport, export_id, with_for_update=True)
            if row is None or row.status not in (PENDING, SENDING):
                return
            media = await session.get_one(Media, row.media_id)
            patient = await session.get_one(Patient, row.patient_id)
            gone = ("patient_erased" if patient.status == ERASED else "media_deleted" if media.status == DELETED
                    else "patient_restricted" if patient.status == RESTRICTED else None)
            if gone is not None:
                row.status, row.error, row.updated_at = FAILED, gone, utcnow()
                await finish(session)
                return
            row.status, row.attempts, row.updated_at = SENDING, row.attempts + 1, utcnow()
            blob = (await session.execute(select(MediaBlob).where(
                MediaBlob.media_id == media.id, MediaBlob.rendition == ORIGINAL))).scalar_one()
            treatment = await session.get(Treatment, media.treatment_id) if media.treatment_id else None
        if self.target is None:
            raise StowFailed("not_configured")
        actor = system_actor(row.tenant_id, SEND_DICOM, f"job-{job_id}")
        attributes = await self._attributes(media, patient, treatment)
        data = await self.sealed.read(sealed_ref(blob))
        instance = await self.pipeline.dicom(data, attributes, width=media.width or 0, height=media.height or 0)
        del data, attributes["patient_id"], attributes["patient_name"]
        await self.target.store(instance.data, sop_instance_uid=attributes["sop_instance_uid"])
        async with self.db.transaction() as session:
            row = await session.get_one(DicomExport, export_id, with_for_update=True)
            if row.status == SENDING:
                now = utcnow()
                row.status, row.error, row.sent_at, row.updated_at = SENT, None, now, now
                row.study_uid, row.series_uid = attributes["study_uid"], attributes["series_uid"]
                row.sop_instance_uid, row.transfer_syntax = attributes["sop_instance_uid"], instance.transfer_syntax
                row.size_bytes = len(instance.data)
                await self.audit.append(session, AuditEvent.of(
                    actor, "dicom_export.send", patient_id=row.patient_id, media_id=row.media_id,
                    dicom_export_id=row.id, transfer_syntax=instance.transfer_syntax))
            await finish(session)

    async def note_failure(self, export_id: str, *, error: str, final: bool, job_id: str) -> None:
        """Keep the attempt's failure on the row; on the last one the export is ``failed``."""
        async with self.db.transaction() as session:
            row = await session.get(DicomExport, export_id, with_for_update=True)
            if row is None or row.status not in (PENDING, SENDING):
                return
            row.error, row.updated_at = error[:100], utcnow()
            if final:
                row.status = FAILED
                actor = system_actor(row.tenant_id, SEND_DICOM, f"job-{job_id}")
                await self.audit.append(session, AuditEvent.of(
                    actor, "dicom_export.send", outcome="failed", patient_id=row.patient_id, media_id=row.media_id,
                    dicom_export_id=row.id, error=row.error))

    async def fail_unfinished(self, export_id: str, *, error: str, job_id: str) -> None:
        """The job went dead (or was found stuck): an unfinished export says ``failed``."""
        await self.note_failure(export_id, error=error, final=True, job_id=job_id)

    async def _attributes(self, media: Media, patient: Patient, treatment: Treatment | None) -> dict[str, Any]:
        """What the DICOM file says, unsealed here in memory and handed to a decoder worker."""
        person = await self.patients.view(patient)
        hospital_number = person.external_ref or ""
        if not hospital_number or len(hospital_number) > _LO or "\\" in hospital_number:
            raise DicomRefused("patient_id_not_dicom")  # Patient ID is an LO: 64 characters, no backslash
        tenant = media.tenant_id
        if treatment is not None:
            scope = f"treatment:{treatment.id}"
            details = await self.treatments.view(treatment)
            study_date, study_description = treatment.performed_on.strftime("%Y%m%d"), details.name
        else:
            scope, study_date, study_description = f"patient:{patient.id}", "", None
        captured = (await self.media.view(media, with_capture=False)).captured_at
        content_date = content_time = ""
        if captured:
            try:
                at = datetime.fromisoformat(captured)
                content_date, content_time = at.strftime("%Y%m%d"), at.strftime("%H%M%S")
            except ValueError:
                pass
        return {
            "patient_id": hospital_number,
            "patient_name": person.display_name or "",
            "birth_date": person.date_of_birth.strftime("%Y%m%d") if person.date_of_birth else "",
            "study_uid": await uids.derive(self.keys, tenant, "study", scope),
            "series_uid": await uids.derive(self.keys, tenant, "series", scope, media.phase),
            "sop_instance_uid": await uids.derive(self.keys, tenant, "instance", media.id),
            "study_date": study_date,
            "study_description": study_description,
            "series_number": PHASES.index(media.phase) + 1 if media.phase in PHASES else 1,
            "series_description": media.phase,
            "content_date": content_date,
            "content_time": content_time,
        }


def view(row: DicomExport) -> DicomExportOut:
    return DicomExportOut(
        id=row.id, media_id=row.media_id, patient_id=row.patient_id, status=cast(Status, row.status), attempts=row.attempts or 0,
        error=row.error, study_instance_uid=row.study_uid, series_instance_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid, transfer_syntax=row.transfer_syntax, size_bytes=row.size_bytes,
        created_at=row.created_at.isoformat(), updated_at=row.updated_at.isoformat(),
        sent_at=row.sent_at.isoformat() if row.sent_at else None,
    )

