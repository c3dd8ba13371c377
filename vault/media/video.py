"""Video ingest and finishing.

Upload: the body is encrypted segment by segment as it arrives and stored as the
``source`` rendition (it still carries the phone's metadata); it is probed through
a decrypting reader (truncated or non-video bodies are refused and shredded), then
the media row (``processing``), its blob row and the finishing job commit together.

Finishing job (``media.finish_video``, idempotent): remux without re-encoding into
fragmented MP4 straight into the encrypting writer under a new object key, take the
poster frame and scan sampled frames for faces, then mark the media ``ready`` and
enqueue the shredding of the source in the same transaction. On the last failed
attempt the media becomes ``failed`` with a reason and the source is shredded too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keys.store import KeyStore
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id, utcnow
from vault.errors import Gone, MediaRejected
from vault.jobs import enqueue
from vault.media import idempotency
from vault.media.models import FAILED, ORIGINAL, PROCESSING, READY, THUMBNAILS, VIDEO, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.patients.service import PatientService
from vault.sealed import SealedBlobs, SealedRef
from vault.webhooks.service import WebhookService

SOURCE = "source"
FINISH_JOB = "media.finish_video"
SHRED_JOB = "media.shred_blob"
DEAD_REASON = "processing failed repeatedly; upload the video again or contact support"

#: the job's fenced completion, run inside the transaction that records its effect
#: (``JobContext.complete_in``; a no-op for a dead job's repair)
Finish = Callable[[AsyncSession], Awaitable[None]]


MEDIA_CREATED, MEDIA_READY = "media.created", "media.ready"


def media_ids(media: Media) -> dict[str, str | None]:
    """A media webhook's body fields: ids (and the media kind) only."""
    return {"media_id": media.id, "patient_id": media.patient_id, "treatment_id": media.treatment_id, "kind": media.kind}


class Videos:
    """Video upload and finishing. The job adapters (workers/jobs/media.py) pass the
    job's id, whether this is its last attempt and its fenced ``finish``; nothing here
    sees a job context or the runtime."""

    def __init__(self, *, db: Database, audit: AuditLog, keys: KeyStore, sealed: SealedBlobs,
                 patients: PatientService, pipeline: PhotoPipeline, webhooks: WebhookService | None = None) -> None:
        self.db = db
        self.webhooks = webhooks
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.pipeline = pipeline

    async def upload(
        self,
        actor: Actor,
        patient_id: str,
        chunks: AsyncIterable[bytes],
        *,
        phase: str,
        treatment_id: str | None,
        idempotency_key: str | None,
    ) -> tuple[Media, bool]:
        """Store, probe and register a video upload: (media, created). A replayed
        Idempotency-Key returns the first media, not created."""
        digest = hashlib.sha256()

        async def hashed() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                digest.update(chunk)
                yield chunk

        ref = await self.sealed.put_stream(actor.tenant_id, patient_id, hashed())
        try:
            probe = await self.pipeline.probe_video(self.sealed, ref)
            key_digest, body_digest = await idempotency.digests(
                self.keys, actor, patient_id, idempotency_key, body_sha256=digest.hexdigest()
            )
            media = Media(
                id=new_id(), tenant_id=actor.tenant_id, patient_id=patient_id, treatment_id=treatment_id, kind=VIDEO,
                status=PROCESSING, phase=phase, mime=probe.mime, width=probe.width, height=probe.height,
                idempotency_key=key_digest, body_digest=body_digest, created_by=actor.token_id,
            )
            async with self.db.transaction() as session:
                await self.patients.load(session, actor, patient_id, lock=True)
                if key_digest is not None:
                    existing = await idempotency.replayed(session, actor.tenant_id, key_digest, body_digest)
                    if existing is not None:
                        raise _Replayed(existing)
                session.add(media)
                await session.flush()
                session.add(MediaBlob(id=ref.id, media_id=media.id, tenant_id=actor.tenant_id, patient_id=patient_id,
                                      rendition=SOURCE, mime=probe.mime, plain_size=ref.plain_size))
                await enqueue(session, FINISH_JOB, {"media_id": media.id}, dedupe_key=f"{FINISH_JOB}:{media.id}")
                await self.audit.append(session, AuditEvent.of(actor, "media.upload", patient_id=patient_id, media_id=media.id))
                if self.webhooks is not None:  # ``media.ready`` follows when the finishing job commits
                    await self.webhooks.notify(session, media.tenant_id, MEDIA_CREATED, media_ids(media))
        except _Replayed as replay:
            await self.sealed.destroy(ref, cause="upload_rollback")
            return replay.media, False
        except BaseException:
            await self.sealed.destroy(ref, cause="upload_rollback")
            raise
        return media, True

    async def finish(self, media_id: str, *, job_id: str, last_attempt: bool, finish: Finish) -> None:
        """The finishing job's body."""
        media, src = await self._processing(media_id)
        if media is None or src is None:
            return  # done already, erased, or deleted: nothing to do
        actor = Actor(media.tenant_id, "job", "system", job_id)
        made: list[SealedRef] = []
        try:
            # Both steps parse the upload: in a decoder worker process (vault.media.processing).
            stripped, info = await self.pipeline.strip_video(self.sealed, src, media.tenant_id, media.patient_id)
            made.append(stripped)
            thumbnails, faces = await self.pipeline.poster_and_faces(self.sealed, stripped, width=info.width, height=info.height)
            for size in sorted(thumbnails):
                made.append(await self.sealed.put_bytes(media.tenant_id, media.patient_id, thumbnails[size]))
            capture = await self.keys.seal_field(
                media.tenant_id, media.patient_id, table="media", column="capture", row_id=media.id,
                value=json.dumps({"duration_s": info.duration_s, "width": info.width, "height": info.height,
                                  "rotation": info.rotation, "video_codec": info.video_codec,
                                  "audio_codecs": list(info.audio_codecs)}),
            )
            async with self.db.transaction() as session:
                await finish(session)  # fenced first, as JobContext.transaction() does
                row = await session.get(Media, media_id, with_for_update=True)
                if row is None or row.status != PROCESSING:
                    raise _Obsolete()
                row.status, row.mime = READY, info.mime
                row.width, row.height, row.capture = info.width, info.height, capture
                row.faces_detected, row.faces_count = faces.detected, faces.count
                row.faces_boxes, row.faces_assumed, row.face_detector = json.dumps(faces.boxes), faces.assumed, faces.detector
                row.faces_state = "incomplete"  # sampled frames only; a video is never released de-identified
                row.updated_at = utcnow()
                renditions = [(ORIGINAL, info.mime)] + [(THUMBNAILS[size], "image/jpeg") for size in sorted(thumbnails)]
                for (rendition, mime), ref in zip(renditions, made, strict=True):
                    session.add(MediaBlob(id=ref.id, media_id=media_id, tenant_id=media.tenant_id, patient_id=media.patient_id,
                                          rendition=rendition, mime=mime, plain_size=ref.plain_size))
                await _retire_source(session, src)
                await self.audit.append(session, AuditEvent.of(actor, "media.processed", patient_id=media.patient_id, media_id=media_id))
                if self.webhooks is not None:
                    await self.webhooks.notify(session, media.tenant_id, MEDIA_READY, media_ids(row))
        except _Obsolete:
            await asyncio.gather(*(self.sealed.destroy(ref, cause="upload_rollback") for ref in made), return_exceptions=True)
        except BaseException as exc:
            await asyncio.gather(*(self.sealed.destroy(ref, cause="upload_rollback") for ref in made), return_exceptions=True)
            if isinstance(exc, (MediaRejected, Gone)) or last_attempt:
                await self._fail(media_id, src, actor, reason=_reason(exc), finish=finish)
                return
            raise

    async def fail_dead(self, media_id: str, *, job_id: str, finish: Finish) -> None:
        """The finishing job's dead path (``on_dead``; also run by reconcile for a video
        left ``processing`` with no live job): the media becomes ``failed`` and its
        original, which still carries the phone's metadata and location, is shredded.
        Idempotent: a media no longer ``processing`` is left alone. Renditions the dead
        job had written have no row; the leftover sweep removes them after the grace."""
        media, src = await self._processing(media_id)
        if media is None:
            return
        actor = Actor(media.tenant_id, "job", "system", job_id)
        if src is not None:
            await self._fail(media_id, src, actor, reason=DEAD_REASON, finish=finish)
            return
        async with self.db.transaction() as session:  # no source row: nothing left to shred
            await finish(session)
            row = await session.get(Media, media_id, with_for_update=True)
            if row is None or row.status != PROCESSING:
                return
            row.status, row.failure_reason, row.updated_at = FAILED, DEAD_REASON, utcnow()
            await self.audit.append(session, AuditEvent.of(actor, "media.failed", patient_id=row.patient_id, media_id=media_id))

    async def shred_blob(self, tenant_id: str, patient_id: str, blob_id: str) -> None:
        """Idempotent: destroying a destroyed key or deleting a deleted blob is a no-op."""
        ref = SealedRef(id=blob_id, tenant_id=tenant_id, patient_id=patient_id, plain_size=0)
        await self.sealed.destroy(ref, cause="object_delete")

    async def _processing(self, media_id: str) -> tuple[Media | None, SealedRef | None]:
        """The media if it is still ``processing``, and its source rendition if it has one."""
        async with self.db.session() as session:
            media = await session.get(Media, media_id)
            source = (
                await session.execute(select(MediaBlob).where(MediaBlob.media_id == media_id, MediaBlob.rendition == SOURCE))
            ).scalar_one_or_none()
        if media is None or media.status != PROCESSING:
            return None, None
        if source is None:
            return media, None
        return media, SealedRef(id=source.id, tenant_id=source.tenant_id, patient_id=source.patient_id,
                                plain_size=source.plain_size)

    async def _fail(self, media_id: str, src: SealedRef, actor: Actor, *, reason: str, finish: Finish) -> None:
        async with self.db.transaction() as session:
            await finish(session)
            row = await session.get(Media, media_id, with_for_update=True)
            if row is None or row.status != PROCESSING:
                return
            row.status, row.failure_reason, row.updated_at = FAILED, reason, utcnow()
            await _retire_source(session, src)
            await self.audit.append(session, AuditEvent.of(actor, "media.failed", patient_id=row.patient_id, media_id=media_id))


class _Replayed(Exception):
    def __init__(self, media: Media) -> None:
        self.media = media


class _Obsolete(Exception):
    pass


async def _retire_source(session: AsyncSession, src: SealedRef) -> None:
    """The original still carries the phone's metadata: shred it, durably, by a job
    committed with the change that makes it unneeded."""
    await session.execute(delete(MediaBlob).where(MediaBlob.id == src.id))
    await enqueue(session, SHRED_JOB, {"tenant_id": src.tenant_id, "patient_id": src.patient_id, "blob_id": src.id},
                  dedupe_key=f"{SHRED_JOB}:{src.id}")


def _reason(exc: BaseException) -> str:
    """A reason a user can act on; never the library's message (it may quote data)."""
    if isinstance(exc, MediaRejected):
        return f"{exc.code}: {exc.message}"[:200]
    return DEAD_REASON
