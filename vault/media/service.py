"""Media use cases: photo upload (strip, thumbnails, faces, encrypt, store, commit),
metadata, content and thumbnail fetches, listings and reviews.

Ordering on upload: blobs are encrypted and stored first, then one transaction
writes the media row, its blob rows and the audit entry. If that transaction
fails, the blobs are shredded (object key first). A crash in between leaves only
ciphertext whose object keys the clean-up job (``storage.sweep_leftovers``,
:mod:`vault.leftovers.sweep`) finds unreferenced once the writer's lease and the grace
have passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field as dataclass_field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.db.tenancy import owned
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id, utcnow
from keys.errors import KeyDestroyed
from keys.store import KeyStore
from vault.errors import DecoderFailed, Forbidden, Gone, NotFound, NotReady, PatientErased, ValidationFailed
from vault.media import faces, idempotency
from vault.media.faces import grown_boxes
from vault.media.models import (
    DELETED,
    ORIGINAL,
    PHOTO,
    READY,
    THUMBNAILS,
    Media,
    MediaBlob,
)
from vault.media.processing import PhotoPipeline
from vault.media.recheck import StrippedOriginal
from vault.media.reads import ReadyRendition, RenditionCache, none_match
from vault.media.responses import FaceSummary, MediaGroup, MediaPage, MediaView
from vault.media.video import MEDIA_CREATED, MEDIA_READY, Finish, Videos, media_ids
from vault.patients.models import ERASED, Patient
from vault.pipeline.results import THUMBNAIL_SIZES
from vault.patients.service import PatientService
from vault import signedurls
from vault.sealed import Reserved, SealedBlobs, SealedRef
from vault.treatments.service import TreatmentService
from vault.webhooks.service import WebhookService

PLAYBACK = "media-playback"
PLAYBACK_LINK_LIFETIME = timedelta(minutes=10)


# Built once (the read path's one query): no statement construction per request.
_READY_RENDITION = (
    select(Media.status, Media.patient_id, Patient.status.label("patient_status"), MediaBlob.id, MediaBlob.mime, MediaBlob.plain_size)
    .join(Patient, Patient.id == Media.patient_id)
    .outerjoin(MediaBlob, (MediaBlob.media_id == Media.id) & (MediaBlob.rendition == bindparam("rendition")))
    .where(Media.id == bindparam("media_id"), Media.tenant_id == bindparam("tenant_id"))
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _since_cursor(cursor: str | None, since: datetime | None) -> tuple[datetime, str] | None:
    """The (updated_at, id) keyset of a ``since`` listing's cursor; a cursor of the other
    kind of listing is refused (422)."""
    if cursor is None:
        return None
    at, sep, media_id = cursor.partition("-")
    if (since is None) == bool(sep):
        raise ValidationFailed(details={"errors": [{"field": "cursor", "problem": "invalid",
                                                    "hint": "a cursor continues the listing it came from"}]})
    if since is None:
        return None
    try:
        return _EPOCH + timedelta(microseconds=int(at)), media_id
    except OverflowError:
        raise ValidationFailed(details={"errors": [{"field": "cursor", "problem": "invalid"}]}) from None


def sealed_ref(blob: MediaBlob) -> SealedRef:
    return SealedRef(id=blob.id, tenant_id=blob.tenant_id, patient_id=blob.patient_id, plain_size=blob.plain_size)


@dataclass(frozen=True)
class Content:
    """A rendition to serve: its reference and what the HTTP layer needs."""

    ref: SealedRef
    mime: str
    etag: str
    key: bytes = dataclass_field(repr=False)  # checked against its key row for this request; never cached
    not_modified: bool = False  # the client's If-None-Match named this etag: answer 304


@dataclass(frozen=True)
class UploadTarget:
    """What :meth:`MediaService.check_target` found: a patient of the tenant, not erased at
    the time, and a treatment of theirs (or None)."""

    tenant_id: str
    patient_id: str
    treatment_id: str | None


@dataclass(frozen=True)
class SignedPlayback:
    """A playback link's signed parameters; the HTTP layer makes them a URL."""

    media_id: str
    params: signedurls.SignedParams
    expires_at: datetime


class MediaService:
    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        keys: KeyStore,
        sealed: SealedBlobs,
        patients: PatientService,
        pipeline: PhotoPipeline,
        webhooks: WebhookService | None = None,
        *,
        staff_links: signedurls.StaffBounds,
    ) -> None:
        self.db = db
        self.webhooks = webhooks
        self.staff_links = staff_links  # how long a link a person asked for stays theirs
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.pipeline = pipeline
        self._renditions = RenditionCache()
        self.videos = Videos(db=db, audit=audit, keys=keys, sealed=sealed, patients=patients, pipeline=pipeline,
                             webhooks=webhooks)

    # -- loading -------------------------------------------------------------------------
    async def load(self, session: AsyncSession, actor: Actor, media_id: str, *, lock: bool = False) -> Media:
        """The media of the actor's tenant whose patient is not erased, else NotFound/Gone."""
        media = await owned(session, Media, media_id, actor.tenant_id, lock=lock, what="media")
        await self.patients.load(session, actor, media.patient_id)  # erased patient -> 410
        if media.status == DELETED:
            raise Gone("the media has been deleted")
        return media

    async def _blobs(self, session: AsyncSession, media_id: str) -> dict[str, MediaBlob]:
        rows = (await session.execute(select(MediaBlob).where(MediaBlob.media_id == media_id))).scalars()
        return {b.rendition: b for b in rows}

    async def check_media(self, actor: Actor, media_id: str) -> None:
        """NotFound/Gone for media the actor may not reach; reads nothing else (no audit entry),
        so a form can answer 404 before it judges its own fields."""
        async with self.db.session() as session:
            await self.load(session, actor, media_id)

    # -- upload --------------------------------------------------------------------------
    async def check_target(self, actor: Actor, patient_id: str, treatment_id: str | None) -> UploadTarget:
        """The upload's patient (not erased) and treatment, of the actor's tenant: 404/410
        before a byte of the body is read."""
        async with self.db.session() as session:
            patient = await self.patients.load(session, actor, patient_id)
            if treatment_id is not None:
                await TreatmentService.owned(session, tenant_id=actor.tenant_id, patient_id=patient.id, treatment_id=treatment_id)
        return UploadTarget(tenant_id=actor.tenant_id, patient_id=patient.id, treatment_id=treatment_id)

    async def upload_photo(
        self,
        actor: Actor,
        target: UploadTarget,
        data: bytes,
        *,
        phase: str,
        idempotency_key: str | None,
    ) -> tuple[MediaView, bool]:
        """Returns (media view, created). A replayed Idempotency-Key returns the first media.

        ``target``: :meth:`check_target`'s answer, given just before the body was read; it
        is not read again here. An erasure since then fails the upload with 410 (the key
        store refuses the new object keys, sealing the capture finds the patient's key
        destroyed, or the commit's locked read of the patient refuses) and leaves nothing
        behind.

        Overlapped (issue 15 item 3): a decoder worker starts on the photo at once; the
        Idempotency-Key is checked meanwhile, and the stripped original, which the worker
        sends (re-checked) before it decodes a pixel, is encrypted and stored while it
        decodes. Whatever was stored is shredded if anything fails."""
        if target.tenant_id != actor.tenant_id:
            raise NotFound("no such patient")
        patient_id, treatment_id = target.patient_id, target.treatment_id
        stripped: asyncio.Future[StrippedOriginal] = asyncio.get_running_loop().create_future()
        processing = asyncio.ensure_future(self.pipeline.process(data, on_original=stripped.set_result))
        reserved: list[Reserved] = []
        try:
            key_digest, body_digest = await idempotency.digests(
                self.keys, actor, patient_id, idempotency_key,
                body_sha256=hashlib.sha256(data).hexdigest() if idempotency_key is not None else "",
            )
            existing = None
            if key_digest is not None:
                async with self.db.session() as session:
                    existing = await idempotency.replayed(session, actor.tenant_id, key_digest, body_digest)
            if existing is not None:
                await asyncio.gather(processing, return_exceptions=True)
                return await self._view_and_audit(actor, existing, "media.upload.replay"), False
            await asyncio.wait((stripped, processing), return_when=asyncio.FIRST_COMPLETED)
            if not stripped.done():
                await processing  # it failed before stripping (raises)
                raise DecoderFailed(details={"check": "stripped.missing"})
            # Ids and keys for every rendition (one commit each way), the original stored now.
            reserved = await self.sealed.reserve(actor.tenant_id, patient_id, 1 + len(THUMBNAIL_SIZES))
            refs = [await self.sealed.put_reserved(reserved[0], stripped.result().data)]
            photo = await processing
            media = Media(
                id=new_id(),
                tenant_id=actor.tenant_id,
                patient_id=patient_id,
                treatment_id=treatment_id,
                kind=PHOTO,
                status=READY,
                phase=phase,
                mime=photo.mime,
                width=photo.width,
                height=photo.height,
                faces_detected=photo.faces.detected,
                faces_count=photo.faces.count,
                faces_boxes=json.dumps(grown_boxes(photo.faces.boxes, photo.width, photo.height)),
                faces_assumed=photo.faces.assumed,
                face_detector=photo.faces.detector,
                faces_state=faces.PENDING,  # until the full-resolution search job has run
                idempotency_key=key_digest,
                body_digest=body_digest,
                created_by=actor.token_id,
            )
            renditions = {ORIGINAL: (photo.stripped, photo.mime)}
            renditions.update({THUMBNAILS[size]: (thumb, "image/jpeg") for size, thumb in photo.thumbnails.items()})
            capture_json = json.dumps(photo.capture, default=str)
            capture, *thumb_refs = await asyncio.gather(
                self.keys.seal_field(actor.tenant_id, patient_id, table="media", column="capture", row_id=media.id,
                                     value=capture_json),
                *(self.sealed.put_reserved(slot, thumb)
                  for slot, (thumb, _) in zip(reserved[1:], list(renditions.values())[1:], strict=False)),
            )
            media.capture = capture
            refs += thumb_refs
        except BaseException as exc:
            await self._abandon(processing, reserved, cancel=isinstance(exc, asyncio.CancelledError))
            if isinstance(exc, KeyDestroyed):
                # Erased since check_target: the key store refused the new object keys, or
                # the patient's key was gone when the capture was sealed.
                raise PatientErased() from None
            raise
        if len(reserved) > len(refs):  # a photo with fewer thumbnails: give the spare keys back
            await asyncio.gather(*(self.sealed.destroy(spare.ref, cause="upload_rollback") for spare in reserved[len(refs):]))
        try:
            async with self.db.transaction() as session:
                patient = await self.patients.load(session, actor, patient_id, lock=True)  # not erased meanwhile
                if key_digest is not None:
                    existing = await idempotency.replayed(session, actor.tenant_id, key_digest, body_digest)
                    if existing is not None:  # a concurrent retry won the race
                        raise _Superseded(existing)
                session.add(media)
                await session.flush()
                for (rendition, (_, mime)), ref in zip(renditions.items(), refs, strict=True):
                    session.add(MediaBlob(id=ref.id, media_id=media.id, tenant_id=actor.tenant_id, patient_id=patient_id,
                                          rendition=rendition, mime=mime, plain_size=ref.plain_size))
                await faces.enqueue_search(session, media.id)
                await self.audit.append(session, AuditEvent.of(actor, "media.upload", patient_id=patient_id, media_id=media.id))
                if self.webhooks is not None:  # a photo is ready when its upload commits
                    await self.webhooks.notify_all(session, media.tenant_id,
                                                   [(MEDIA_CREATED, media_ids(media)), (MEDIA_READY, media_ids(media))])
        except _Superseded as won:
            await asyncio.gather(*(self.sealed.destroy(ref, cause="upload_rollback") for ref in refs))
            return await self._view_and_audit(actor, won.media, "media.upload.replay"), False
        except BaseException:
            await asyncio.gather(*(self.sealed.destroy(ref, cause="upload_rollback") for ref in refs), return_exceptions=True)
            raise
        # The capture just sealed, as it reads back: not opened again from its ciphertext.
        return await self.view(media, opened_capture=json.loads(capture_json)), True

    async def _abandon(self, processing: asyncio.Future[Any], reserved: list[Reserved], *, cancel: bool) -> None:
        """A failed photo upload: its worker item finished (or, when the request itself is
        cancelled, cancelled), then every reserved blob shredded and deleted."""
        if cancel:
            processing.cancel()
        await asyncio.gather(processing, return_exceptions=True)
        await asyncio.gather(*(self.sealed.destroy(slot.ref, cause="upload_rollback") for slot in reserved),
                             return_exceptions=True)

    async def upload_video(
        self,
        actor: Actor,
        patient_id: str,
        chunks: AsyncIterable[bytes],
        *,
        phase: str,
        treatment_id: str | None,
        idempotency_key: str | None,
    ) -> tuple[MediaView, bool]:
        """Returns (media view, created); the video is ``processing`` until its job finishes it."""
        media, created = await self.videos.upload(actor, patient_id, chunks, phase=phase, treatment_id=treatment_id,
                                                  idempotency_key=idempotency_key)
        if not created:
            return await self._view_and_audit(actor, media, "media.upload.replay"), False
        return await self.view(media), True

    # -- jobs (called by workers/jobs/media.py) ------------------------------------------
    async def finish_video(self, media_id: str, *, job_id: str, last_attempt: bool, finish: Finish) -> None:
        await self.videos.finish(media_id, job_id=job_id, last_attempt=last_attempt, finish=finish)

    async def fail_video(self, media_id: str, *, job_id: str, finish: Finish) -> None:
        await self.videos.fail_dead(media_id, job_id=job_id, finish=finish)

    async def shred_blob(self, tenant_id: str, patient_id: str, blob_id: str) -> None:
        await self.videos.shred_blob(tenant_id, patient_id, blob_id)

    # -- reading -------------------------------------------------------------------------
    async def view(self, media: Media, *, with_capture: bool = True, with_captured_at: bool = True,
                   opened_capture: Any = None) -> MediaView:
        """``opened_capture``: the capture in the clear when the caller has it (the upload
        that sealed it), instead of opening ``media.capture``."""
        capture = opened_capture
        if capture is None and (with_capture or with_captured_at) and media.capture is not None:
            capture = json.loads(
                await self.keys.open_field(media.tenant_id, media.patient_id, table="media", column="capture",
                                           row_id=media.id, sealed=media.capture)
            )
        captured_at = capture.get("captured_at") if with_captured_at and isinstance(capture, dict) else None
        return MediaView(
            id=media.id,
            patient_id=media.patient_id,
            treatment_id=media.treatment_id,
            kind=media.kind,
            status=media.status,
            phase=media.phase,
            mime=media.mime,
            width=media.width,
            height=media.height,
            faces=face_summary(media),
            capture=capture if with_capture else None,
            captured_at=captured_at if isinstance(captured_at, str) else None,
            failure_reason=media.failure_reason,
            created_at=media.created_at.isoformat(),
            updated_at=media.updated_at.isoformat(),
        )

    async def _view_and_audit(self, actor: Actor, media: Media, action: str) -> MediaView:
        view = await self.view(media)
        await self.audit.record(AuditEvent.of(actor, action, patient_id=media.patient_id, media_id=media.id))
        return view

    async def get(self, actor: Actor, media_id: str) -> MediaView:
        async with self.db.session() as session:
            media = await self.load(session, actor, media_id)
        return await self._view_and_audit(actor, media, "media.read")

    async def content(self, actor: Actor, media_id: str, *, rendition: str, action: str,
                      if_none_match: Iterable[str] | None = None) -> Content:
        """The rendition to serve, after the tenant check, the key row check and a durable
        audit entry. ``if_none_match``: the entity tags a client holds; when one matches,
        the same checks and the audit entry (outcome ``not_modified``) come first and the
        caller answers 304.

        Hot path: the rendition's immutable fields come from :class:`RenditionCache` (see
        vault/media/reads.py for why that is safe without invalidation), else from one
        query; the key row is read on every call."""
        cached = self._renditions.get(media_id, rendition)
        if cached is not None and cached.tenant_id != actor.tenant_id:
            raise NotFound("no such media")
        ready = cached or await self._ready_rendition(actor, media_id, rendition)
        try:
            key = await self.sealed.open_key(ready.ref)
        except Gone:
            if cached is None:
                raise
            self._renditions.evict(media_id, rendition)  # ask the database why (erased, deleted, replaced)
            ready = await self._ready_rendition(actor, media_id, rendition)
            if ready.blob_id == cached.blob_id:
                raise
            key = await self.sealed.open_key(ready.ref)
        etag = ready.etag
        unchanged = none_match(etag, if_none_match)
        await self.audit.record(AuditEvent.of(actor, action, outcome="not_modified" if unchanged else "ok",
                                              patient_id=ready.patient_id, media_id=media_id, rendition=rendition))
        return Content(ref=ready.ref, mime=ready.mime, etag=etag, key=key, not_modified=unchanged)

    async def _ready_rendition(self, actor: Actor, media_id: str, rendition: str) -> ReadyRendition:
        """One query, in no transaction of its own: the media of the actor's tenant, its
        patient's status and the rendition's blob row; cached once ready."""
        row = await self.db.first(_READY_RENDITION, {"media_id": media_id, "tenant_id": actor.tenant_id, "rendition": rendition})
        if row is None:
            raise NotFound("no such media")
        if row.patient_status == ERASED:
            raise PatientErased()
        if row.status == DELETED:
            raise Gone("the media has been deleted")
        if row.status != READY:
            raise NotReady(details={"status": row.status})
        if row.id is None:
            raise NotFound("no such rendition")
        ready = ReadyRendition(tenant_id=actor.tenant_id, patient_id=row.patient_id, blob_id=row.id, mime=row.mime,
                               plain_size=row.plain_size)
        self._renditions.put(media_id, rendition, ready)
        return ready

    async def playback_link(self, actor: Actor, media_id: str) -> SignedPlayback:
        async with self.db.session() as session:
            media = await self.load(session, actor, media_id)
        if media.status != READY:
            raise NotReady(details={"status": media.status})
        expires_at = utcnow() + PLAYBACK_LINK_LIFETIME
        params = await signedurls.sign(
            self.keys, actor.tenant_id, purpose=PLAYBACK, resource=media.id, token_id=actor.token_id, expires_at=expires_at
        )
        await self.audit.record(AuditEvent.of(actor, "media.playback_link", patient_id=media.patient_id, media_id=media.id))
        return SignedPlayback(media_id=media.id, params=params, expires_at=expires_at)

    async def playback_actor(self, media_id: str, query: dict[str, str], *, request_id: str) -> Actor:
        """The actor a signed playback link stands for: its token must be live; the
        signature binds media, token and expiry. Whether its role may still read content
        is the HTTP layer's check (against the content route's permissions)."""
        try:
            params = signedurls.SignedParams(token_id=query["token"], expires=int(query["expires"]), signature=query["signature"])
        except (KeyError, ValueError):
            raise Forbidden("the link is not valid") from None
        async with self.db.session() as session:
            principal = await signedurls.signer(session, params.token_id, staff=self.staff_links)
        await signedurls.verify(self.keys, principal.tenant_id, purpose=PLAYBACK, resource=media_id, params=params, now=utcnow())
        return Actor(tenant_id=principal.tenant_id, token_id=principal.token_id, role=principal.role, request_id=request_id)

    async def read_all(self, content: Content) -> bytes:
        return await self.sealed.read(content.ref, key=content.key)

    async def stream(self, content: Content, start: int, end: int) -> AsyncIterator[bytes]:
        return await self.sealed.stream(content.ref, start, end, key=content.key)

    async def page(
        self,
        actor: Actor,
        patient_id: str,
        *,
        cursor: str | None,
        limit: int,
        phase: str | None,
        treatment_id: str | None,
        since: datetime | None = None,
        captured_at: bool = False,
    ) -> MediaPage:
        """One keyset page. Without ``since``: by id. With ``since``: media created or
        changed at or after it, by (updated_at, id), so items with the same timestamp are
        neither skipped nor repeated across pages; the cursor carries both."""
        keyset = _since_cursor(cursor, since)
        async with self.db.session() as session:
            patient = await self.patients.load(session, actor, patient_id)
            query = select(Media).where(Media.patient_id == patient.id, Media.tenant_id == actor.tenant_id,
                                        Media.status != DELETED)
            if phase:
                query = query.where(Media.phase == phase)
            if treatment_id:
                query = query.where(Media.treatment_id == treatment_id)
            if since is not None:
                query = query.where(Media.updated_at >= since)
                if keyset is not None:
                    at, after = keyset
                    query = query.where(or_(Media.updated_at > at, and_(Media.updated_at == at, Media.id > after)))
                query = query.order_by(Media.updated_at, Media.id)
            else:
                if cursor:
                    query = query.where(Media.id > cursor)
                query = query.order_by(Media.id)
            rows = (await session.execute(query.limit(limit + 1))).scalars().all()
        more = len(rows) > limit
        rows = rows[:limit]
        dates: dict[str, Any] = {}
        sealed = {m.id: m.capture for m in rows if m.capture is not None}
        if captured_at and sealed:  # one patient: its key is fetched once for the page
            opened = await self.keys.open_fields(actor.tenant_id, patient_id, table="media", column="capture", sealed=sealed)
            dates = {media_id: json.loads(raw).get("captured_at") for media_id, raw in opened.items()}
        items = [await self.view(m, with_capture=False, with_captured_at=False) for m in rows]
        items = [i.model_copy(update={"captured_at": d}) if isinstance(d := dates.get(i.id), str) else i for i in items]
        await self.audit.record(AuditEvent.of(actor, "media.list", patient_id=patient_id, count=str(len(items))))
        groups: dict[str, MediaGroup] = {}
        for item in items:  # before/after pairs of each treatment, for side-by-side views
            if item.treatment_id and item.phase in ("before", "after"):
                group = groups.setdefault(item.treatment_id, MediaGroup(before=[], after=[]))
                (group.before if item.phase == "before" else group.after).append(item.id)
        next_cursor = None
        if more:
            last = rows[-1]
            next_cursor = last.id if since is None else f"{_micros(last.updated_at)}-{last.id}"
        return MediaPage(items=items, next_cursor=next_cursor, groups=groups)

    # -- changes -------------------------------------------------------------------------
    async def update(self, actor: Actor, media_id: str, changes: dict[str, Any]) -> MediaView:
        async with self.db.transaction() as session:
            media = await self.load(session, actor, media_id, lock=True)
            if "treatment_id" in changes and changes["treatment_id"] is not None:
                await TreatmentService.owned(session, tenant_id=actor.tenant_id, patient_id=media.patient_id,
                                             treatment_id=changes["treatment_id"])
            for field in ("phase", "treatment_id"):
                if field in changes:
                    setattr(media, field, changes[field])
            if "identifiable" in changes:
                value = changes["identifiable"]
                if media.face_review == "identifiable" and value is not True and actor.role != "dpo":
                    # A reviewer's "identifiable, cannot be de-identified" stands until a dpo clears it.
                    raise Forbidden("only a data protection officer may clear an 'identifiable' mark")
                media.face_review = None if value is None else ("identifiable" if value else "not_identifiable")
                media.reviewed_by = actor.token_id
            media.updated_at = utcnow()
            await self.audit.append(session, AuditEvent.of(actor, "media.update", patient_id=media.patient_id,
                                                           media_id=media.id, fields=",".join(sorted(changes))))
        return await self.view(media)


def face_summary(media: Media) -> FaceSummary:
    """The detector's finding and a person's review; ``identifiable`` is what counts."""
    if media.face_review == "identifiable":
        identifiable = True
    elif media.face_review == "not_identifiable":
        identifiable = False
    else:
        identifiable = media.faces_detected
    return FaceSummary(
        detected=media.faces_detected,
        count=media.faces_count,
        boxes=json.loads(media.faces_boxes),
        assumed=media.faces_assumed,
        detector=media.face_detector,
        review=media.face_review,
        identifiable=identifiable,
        state=media.faces_state,
    )


class _Superseded(Exception):
    def __init__(self, media: Media) -> None:
        self.media = media
