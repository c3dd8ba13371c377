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
from collections.abc import AsyncIterable
from typing import Any

from sqlalchemy import delete, select

from vault.actor import Actor
from vault.audit.service import AuditEvent
from vault.db import new_id, utcnow
from vault.errors import Gone, IdempotencyConflict, MediaRejected
from vault.jobs import enqueue
from vault.media.models import FAILED, ORIGINAL, PROCESSING, READY, THUMBNAILS, VIDEO, Media, MediaBlob
from vault.sealed import SealedRef

SOURCE = "source"
FINISH_JOB = "media.finish_video"
SHRED_JOB = "media.shred_blob"


async def upload_video(
    service,
    actor: Actor,
    patient_id: str,
    chunks: AsyncIterable[bytes],
    *,
    phase: str,
    treatment_id: str | None,
    idempotency_key: str | None,
) -> tuple[dict[str, Any], bool]:
    """Store, probe and register a video upload; ``service`` is the MediaService."""
    digest = hashlib.sha256()

    async def hashed():
        async for chunk in chunks:
            digest.update(chunk)
            yield chunk

    ref = await service.sealed.put_stream(actor.tenant_id, patient_id, hashed())
    try:
        probe = await service.pipeline.probe_video(service.sealed, ref)
        key_digest = body_digest = None
        if idempotency_key is not None:
            key_digest = await service.keys.blind_index(
                actor.tenant_id, "media.idempotency-key", f"{actor.token_id}|{patient_id}|{idempotency_key}"
            )
            body_digest = await service.keys.blind_index(actor.tenant_id, "media.body", digest.hexdigest())
        media = Media(
            id=new_id(), tenant_id=actor.tenant_id, patient_id=patient_id, treatment_id=treatment_id, kind=VIDEO,
            status=PROCESSING, phase=phase, mime=probe.mime, width=probe.width, height=probe.height,
            idempotency_key=key_digest, body_digest=body_digest, created_by=actor.token_id,
        )
        async with service.db.transaction() as session:
            await service.patients.load(session, actor, patient_id, lock=True)
            if key_digest is not None:
                existing = (
                    await session.execute(select(Media).where(Media.tenant_id == actor.tenant_id, Media.idempotency_key == key_digest))
                ).scalar_one_or_none()
                if existing is not None:
                    if existing.body_digest != body_digest:
                        raise IdempotencyConflict()
                    raise _Replayed(existing)
            session.add(media)
            await session.flush()
            session.add(MediaBlob(id=ref.id, media_id=media.id, tenant_id=actor.tenant_id, patient_id=patient_id,
                                  rendition=SOURCE, mime=probe.mime, plain_size=ref.plain_size))
            await enqueue(session, FINISH_JOB, {"media_id": media.id}, dedupe_key=f"{FINISH_JOB}:{media.id}")
            await service.audit.append(session, AuditEvent.of(actor, "media.upload", patient_id=patient_id, media_id=media.id))
    except _Replayed as replay:
        await service.sealed.destroy(ref, cause="upload_rollback")
        return await service._view_and_audit(actor, replay.media, "media.upload.replay"), False
    except BaseException:
        await service.sealed.destroy(ref, cause="upload_rollback")
        raise
    return await service.view(media), True


class _Replayed(Exception):
    def __init__(self, media: Media) -> None:
        self.media = media


async def finish_video(ctx, media_id: str) -> None:
    """The finishing job's body (``ctx`` is the job context)."""
    rt = ctx.runtime
    async with rt.db.session() as session:
        media = await session.get(Media, media_id)
        source = (
            await session.execute(select(MediaBlob).where(MediaBlob.media_id == media_id, MediaBlob.rendition == SOURCE))
        ).scalar_one_or_none()
    if media is None or media.status != PROCESSING or source is None:
        return  # done already, erased, or deleted: nothing to do
    actor = Actor(media.tenant_id, "job", "system", ctx.job_id)
    src = SealedRef(id=source.id, tenant_id=source.tenant_id, patient_id=source.patient_id, plain_size=source.plain_size)
    made: list[SealedRef] = []
    try:
        # Both steps parse the upload: in a decoder worker process (vault.media.processing).
        stripped, info = await rt.media.pipeline.strip_video(rt.sealed, src, media.tenant_id, media.patient_id)
        made.append(stripped)
        thumbnails, faces = await rt.media.pipeline.poster_and_faces(rt.sealed, stripped, width=info.width, height=info.height)
        for size in sorted(thumbnails):
            made.append(await rt.sealed.put_bytes(media.tenant_id, media.patient_id, thumbnails[size]))
        capture = await rt.keys.seal_field(
            media.tenant_id, media.patient_id, table="media", column="capture", row_id=media.id,
            value=json.dumps({"duration_s": info.duration_s, "width": info.width, "height": info.height,
                              "rotation": info.rotation, "video_codec": info.video_codec,
                              "audio_codecs": list(info.audio_codecs)}),
        )
        async with ctx.transaction() as session:
            row = await session.get(Media, media_id, with_for_update=True)
            if row is None or row.status != PROCESSING:
                raise _Obsolete()
            row.status, row.mime = READY, info.mime
            row.width, row.height, row.capture = info.width, info.height, capture
            row.faces_detected, row.faces_count = faces.detected, faces.count
            row.faces_boxes, row.faces_assumed, row.face_detector = json.dumps(faces.boxes), faces.assumed, faces.detector
            row.updated_at = utcnow()
            renditions = [(ORIGINAL, info.mime)] + [(THUMBNAILS[size], "image/jpeg") for size in sorted(thumbnails)]
            for (rendition, mime), ref in zip(renditions, made, strict=True):
                session.add(MediaBlob(id=ref.id, media_id=media_id, tenant_id=media.tenant_id, patient_id=media.patient_id,
                                      rendition=rendition, mime=mime, plain_size=ref.plain_size))
            await _retire_source(session, src)
            await rt.audit.append(session, AuditEvent.of(actor, "media.processed", patient_id=media.patient_id, media_id=media_id))
    except _Obsolete:
        await asyncio.gather(*(rt.sealed.destroy(ref, cause="upload_rollback") for ref in made), return_exceptions=True)
    except BaseException as exc:
        await asyncio.gather(*(rt.sealed.destroy(ref, cause="upload_rollback") for ref in made), return_exceptions=True)
        if isinstance(exc, (MediaRejected, Gone)) or ctx.last_attempt:
            await _fail(ctx, media_id, src, actor, reason=_reason(exc))
            return
        raise


class _Obsolete(Exception):
    pass


DEAD_REASON = "processing failed repeatedly; upload the video again or contact support"


async def fail_dead(ctx, media_id: str) -> None:
    """The finishing job's dead path (``on_dead``; also run by reconcile for a video
    left ``processing`` with no live job): the media becomes ``failed`` and its
    original, which still carries the phone's metadata and location, is shredded.
    Idempotent: a media no longer ``processing`` is left alone. Renditions the dead
    job had written have no row; the leftover sweep removes them after the grace."""
    async with ctx.runtime.db.session() as session:
        media = await session.get(Media, media_id)
        source = (
            await session.execute(select(MediaBlob).where(MediaBlob.media_id == media_id, MediaBlob.rendition == SOURCE))
        ).scalar_one_or_none()
    if media is None or media.status != PROCESSING:
        return
    actor = Actor(media.tenant_id, "job", "system", ctx.job_id)
    if source is not None:
        src = SealedRef(id=source.id, tenant_id=source.tenant_id, patient_id=source.patient_id, plain_size=source.plain_size)
        await _fail(ctx, media_id, src, actor, reason=DEAD_REASON)
        return
    async with ctx.transaction() as session:  # no source row: nothing left to shred
        row = await session.get(Media, media_id, with_for_update=True)
        if row is None or row.status != PROCESSING:
            return
        row.status, row.failure_reason, row.updated_at = FAILED, DEAD_REASON, utcnow()
        await ctx.runtime.audit.append(session, AuditEvent.of(actor, "media.failed", patient_id=row.patient_id, media_id=media_id))


async def _retire_source(session, src: SealedRef) -> None:
    """The original still carries the phone's metadata: shred it, durably, by a job
    committed with the change that makes it unneeded."""
    await session.execute(delete(MediaBlob).where(MediaBlob.id == src.id))
    await enqueue(session, SHRED_JOB, {"tenant_id": src.tenant_id, "patient_id": src.patient_id, "blob_id": src.id},
                  dedupe_key=f"{SHRED_JOB}:{src.id}")


async def _fail(ctx, media_id: str, src: SealedRef, actor: Actor, *, reason: str) -> None:
    async with ctx.transaction() as session:
        row = await session.get(Media, media_id, with_for_update=True)
        if row is None or row.status != PROCESSING:
            return
        row.status, row.failure_reason, row.updated_at = FAILED, reason, utcnow()
        await _retire_source(session, src)
        await ctx.runtime.audit.append(session, AuditEvent.of(actor, "media.failed", patient_id=row.patient_id, media_id=media_id))


def _reason(exc: BaseException) -> str:
    """A reason a user can act on; never the library's message (it may quote data)."""
    if isinstance(exc, MediaRejected):
        return f"{exc.code}: {exc.message}"[:200]
    return "processing failed repeatedly; upload the video again or contact support"


async def shred_blob(ctx, tenant_id: str, patient_id: str, blob_id: str) -> None:
    """Idempotent: destroying a destroyed key or deleting a deleted blob is a no-op."""
    ref = SealedRef(id=blob_id, tenant_id=tenant_id, patient_id=patient_id, plain_size=0)
    await ctx.runtime.sealed.destroy(ref, cause="object_delete")
