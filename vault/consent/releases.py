"""Release paths: the releasable listing, its signed thumbnails, a release, its
one-time download, and the release (recall) list. Each one asks the consent gate
(:func:`vault.consent.gate.decide`) with fresh rows, and nothing here decides
release otherwise.

A release under identifiable consent serves the stripped original; under de-identified
consent a face-redacted JPEG made for that release from the stripped original (opaque
boxes with a generous margin, re-encoded, no metadata), stored as its own sealed blob
and shredded after its one download or when the link expires. The redaction (decode,
fill, re-encode) runs in a sandboxed decoder worker, never in this process: the stored
original's pixel data is the upload's own (:meth:`vault.media.processing.PhotoPipeline.redact`,
whose result is re-checked here as a bare JPEG of the expected size).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from sqlalchemy import CursorResult, and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keys.store import KeyStore
from vault import signedurls
from vault.db.tenancy import owned
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent import gate
from vault.consent.models import ConsentRecord, Release
from vault.consent.responses import ReleasePage, ReleaseView
from vault.consent.service import facts_of, load_events, release_view, shred_rendition
from vault.db import Database, new_id, utcnow
from vault.errors import ConsentRequired, Forbidden, Gone, NotFound
from vault.media import recheck
from vault.media.models import ORIGINAL, READY, THUMB_256, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.media.reads import etag_of, none_match
from vault.media.service import sealed_ref
from vault.patients.models import ACTIVE, Patient
from vault.patients.service import PatientService
from vault.sealed import SealedBlobs, SealedRef

LINK_TTL = timedelta(minutes=15)  # a release's download link
THUMBNAIL_TTL = timedelta(minutes=10)  # a signed thumbnail URL in the listing
REDACTION_MARGIN = 0.4  # of each face box's width/height, on every side
_SCAN_BATCH = 200
_SCAN_BUDGET = 2000  # candidate rows one listing request may examine
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/heic": "heic", "video/mp4": "mp4"}


@dataclass(frozen=True)
class ReleaseThumbnail:
    """A signed thumbnail to send: ``data`` is None when the client's tag still matches (304)."""

    data: bytes | None
    etag: str


def thumbnail_purpose(purpose: str) -> str:
    return f"release-thumbnail:{purpose}"


@dataclass(frozen=True)
class Download:
    ref: SealedRef
    mime: str
    filename: str  # random: nothing about the patient or the media
    release: Release
    claimed: bool


@dataclass(frozen=True)
class Releasable:
    """One (media, purpose) the gate allows now, with the signed parameters of its
    thumbnail; the HTTP layer makes them a URL."""

    media_id: str
    purpose: str
    rendition: str
    kind: str
    phase: str
    treatment_id: str | None
    consent_id: str | None
    thumbnail: signedurls.SignedParams
    thumbnail_expires_at: datetime


@dataclass(frozen=True)
class MadeRelease:
    """A release just made; the HTTP layer adds its download URL."""

    id: str
    media_id: str
    purpose: str
    rendition: str
    consent_id: str | None
    expires_at: datetime


class ReleaseService:
    def __init__(self, db: Database, audit: AuditLog, keys: KeyStore, sealed: SealedBlobs, patients: PatientService,
                 pipeline: PhotoPipeline, *, public_url: str | None = None) -> None:
        # ``public_url`` is unused (URLs are built by vault/consent/views.py); accepted
        # until vault/runtime.py stops passing it (issue 12).
        self.db = db
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.pipeline = pipeline  # redaction runs in its decoder workers

    # -- the gate with fresh rows --------------------------------------------------------
    async def _media(self, session: AsyncSession, tenant_id: str, media_id: str) -> Media:
        return await owned(session, Media, media_id, tenant_id, what="media")

    async def _decide(self, session: AsyncSession, actor: Actor, media: Media, purpose: str, now: datetime,
                      *, lock: bool = False) -> gate.Decision:
        # An erased patient's media answer 410 on every path, as elsewhere; the gate still
        # denies erased patients on its own (it is the one place release is decided).
        patient = await self.patients.load(session, actor, media.patient_id, lock=lock)
        events = (await load_events(session, actor.tenant_id, [media.patient_id])).get(media.patient_id, [])
        return gate.decide(facts_of(media), purpose, now, events, patient.status)

    @staticmethod
    async def _blob(session: AsyncSession, media_id: str, rendition: str) -> MediaBlob:
        blob = (
            await session.execute(select(MediaBlob).where(MediaBlob.media_id == media_id, MediaBlob.rendition == rendition))
        ).scalar_one_or_none()
        if blob is None:
            raise NotFound("no such rendition")
        return blob

    # -- the releasable listing ----------------------------------------------------------
    async def releasable(self, actor: Actor, *, purpose: str | None, cursor: str | None,
                         limit: int) -> tuple[list[Releasable], str | None]:
        """What the gate allows now, one item per (media, purpose), paged by media id."""
        purposes = [purpose] if purpose else list(gate.PURPOSES)
        now = utcnow()
        items: list[Releasable] = []
        scanned, listed, position, more = 0, 0, cursor, True
        async with self.db.session() as session:
            while more and listed < limit and scanned < _SCAN_BUDGET:
                rows = await self._candidates(session, actor.tenant_id, position, _SCAN_BATCH)
                more = len(rows) == _SCAN_BATCH
                events = await load_events(session, actor.tenant_id, {m.patient_id for m, _ in rows})
                for index, (media, status) in enumerate(rows):
                    scanned, position = scanned + 1, media.id
                    facts, history = facts_of(media), events.get(media.patient_id, [])
                    allowed = [(p, d) for p in purposes if (d := gate.decide(facts, p, now, history, status)).allowed]
                    for p, decision in allowed:
                        items.append(await self._item(actor, media, p, decision, now))
                    listed += bool(allowed)
                    if listed >= limit:
                        more = more or index < len(rows) - 1
                        break
        await self.audit.record(AuditEvent.of(actor, "release.list_releasable", purpose=purpose, count=str(len(items))))
        return items, (position if more else None)

    @staticmethod
    async def _candidates(session: AsyncSession, tenant_id: str, after: str | None, limit: int) -> list[tuple[Media, str]]:
        # Only narrows what the gate would deny anyway (not ready, patient not active, no grant).
        has_grant = exists(select(ConsentRecord.id).where(ConsentRecord.patient_id == Media.patient_id, ConsentRecord.kind == gate.GRANT))
        query = (
            select(Media, Patient.status)
            .join(Patient, Patient.id == Media.patient_id)
            .where(Media.tenant_id == tenant_id, Media.status == READY, Patient.status == ACTIVE, has_grant)
        )
        if after:
            query = query.where(Media.id > after)
        return [(m, s) for m, s in (await session.execute(query.order_by(Media.id).limit(limit))).all()]

    async def _item(self, actor: Actor, media: Media, purpose: str, decision: gate.Decision, now: datetime) -> Releasable:
        rendition = decision.rendition
        assert rendition is not None  # an allowed decision always names its rendition
        expires_at = now + THUMBNAIL_TTL
        params = await signedurls.sign(self.keys, actor.tenant_id, purpose=thumbnail_purpose(purpose),
                                       resource=f"{media.id}:{rendition}", token_id=actor.token_id, expires_at=expires_at)
        return Releasable(media_id=media.id, purpose=purpose, rendition=rendition, kind=media.kind, phase=media.phase,
                          treatment_id=media.treatment_id, consent_id=decision.consent_id, thumbnail=params,
                          thumbnail_expires_at=expires_at)

    # -- the signed thumbnail ------------------------------------------------------------
    async def thumbnail(self, *, media_id: str, purpose: str, rendition: str, params: signedurls.SignedParams,
                        request_id: str, if_none_match: Iterable[str] | None = None) -> ReleaseThumbnail:
        """The 256 px thumbnail of the rendition that would be released. The signature is
        the authorisation; the token must still be live and the gate must still agree.
        A client holding its tag (``if_none_match``) gets ``data=None`` (a 304) only after
        the same checks, the key row and the audit entry."""
        now = utcnow()
        async with self.db.session() as session:
            principal = await signedurls.signer(session, params.token_id)
        await signedurls.verify(self.keys, principal.tenant_id, purpose=thumbnail_purpose(purpose),
                                resource=f"{media_id}:{rendition}", params=params, now=now)
        actor = Actor(tenant_id=principal.tenant_id, token_id=principal.token_id, role=principal.role, request_id=request_id)
        if principal.role != "marketing":
            raise Forbidden()
        async with self.db.session() as session:
            media = await self._media(session, actor.tenant_id, media_id)
            decision = await self._decide(session, actor, media, purpose, now)
            blob = await self._blob(session, media.id, THUMB_256) if decision.rendition == rendition else None
        if blob is None:
            await self._denied(actor, media, "release.thumbnail", decision)
        ref = sealed_ref(blob)
        key = await self.sealed.open_key(ref)  # 410 once shredded, for a 304 as for a 200
        # The bytes depend on the stored thumbnail and, redacted, on the boxes and margin.
        parts = (blob.id, rendition) if rendition != gate.DEIDENTIFIED else (
            blob.id, rendition, repr(json_boxes(media)), str(media.width), str(media.height), str(REDACTION_MARGIN))
        etag = etag_of(*parts)
        unchanged = none_match(etag, if_none_match)
        data = None
        if not unchanged:
            data = await self.sealed.read(ref, key=key)
            if rendition == gate.DEIDENTIFIED:
                data = await self._redacted_thumbnail(data, media)
        await self.audit.record(AuditEvent.of(actor, "release.thumbnail", outcome="not_modified" if unchanged else "ok",
                                              patient_id=media.patient_id, media_id=media.id, purpose=purpose,
                                              rendition=rendition))
        return ReleaseThumbnail(data=data, etag=etag)

    async def _denied(self, actor: Actor, media: Media, action: str, decision: gate.Decision) -> NoReturn:
        reason = decision.reason if not decision.allowed else "rendition_changed"
        await self.audit.record(AuditEvent.of(actor, action, outcome="consent_required", patient_id=media.patient_id,
                                              media_id=media.id, reason=reason))
        raise ConsentRequired(details={"reason": reason})

    # -- releasing ---------------------------------------------------------------------------
    async def release(self, actor: Actor, media_id: str, *, purpose: str, recipient: str) -> MadeRelease:
        async with self.db.session() as session:
            media = await self._media(session, actor.tenant_id, media_id)
            decision = await self._decide(session, actor, media, purpose, utcnow())
            original = await self._blob(session, media.id, ORIGINAL) if decision.allowed else None
        if original is None:
            raise ConsentRequired(details={"reason": decision.reason})
        made: SealedRef | None = None
        if decision.outcome == gate.ALLOW_DEIDENTIFIED:
            made = await self._redacted(media, sealed_ref(original))
        try:
            async with self.db.transaction() as session:
                # Decide again under the patient's row lock: a withdrawal holds it too.
                media = await self._media(session, actor.tenant_id, media_id)
                now = utcnow()
                again = await self._decide(session, actor, media, purpose, now, lock=True)
                if again.outcome != decision.outcome:
                    raise ConsentRequired(details={"reason": again.reason if not again.allowed else "rendition_changed"})
                release = Release(
                    id=new_id(), tenant_id=actor.tenant_id, patient_id=media.patient_id, media_id=media.id, purpose=purpose,
                    rendition=again.rendition, consent_id=again.consent_id, released_by=actor.token_id, created_at=now,
                    expires_at=now + LINK_TTL, blob_id=made.id if made else None, blob_size=made.plain_size if made else None,
                    mime="image/jpeg" if made else original.mime,
                )
                release.recipient = await self.keys.seal_field(actor.tenant_id, media.patient_id, table="releases",
                                                               column="recipient", row_id=release.id, value=recipient)
                session.add(release)
                await session.flush()
                await self.audit.append(session, AuditEvent.of(actor, "release.create", patient_id=media.patient_id, media_id=media.id,
                                                               release_id=release.id, purpose=purpose, rendition=release.rendition))
        except BaseException:
            if made is not None:
                await self.sealed.destroy(made)
            raise
        return MadeRelease(id=release.id, media_id=media.id, purpose=purpose, rendition=release.rendition,
                           consent_id=release.consent_id, expires_at=release.expires_at)

    async def _redacted(self, media: Media, original: SealedRef) -> SealedRef:
        data = await self.sealed.read(original)
        redacted = await self.pipeline.redact(data, json_boxes(media), margin=REDACTION_MARGIN,
                                              width=media.width or 0, height=media.height or 0)
        del data
        ref: SealedRef = await self.sealed.put_bytes(media.tenant_id, media.patient_id, redacted)
        return ref

    async def _redacted_thumbnail(self, thumb: bytes, media: Media) -> bytes:
        """The thumbnail redacted with the full image's boxes scaled to it; its size comes
        from its JPEG frame header (no pixel decoded here)."""
        tw, th = recheck.jpeg_dimensions(thumb)
        boxes = scale_boxes(json_boxes(media), (media.width or 0, media.height or 0), (tw, th))
        redacted: bytes = await self.pipeline.redact(thumb, boxes, margin=REDACTION_MARGIN, width=tw, height=th)
        return redacted

    # -- the one-time download -----------------------------------------------------------
    async def open_download(self, actor: Actor, release_id: str, *, claim: bool = True) -> Download:
        """Claim the release's one download after asking the gate again; the caller streams.
        ``claim=False`` (HEAD) runs every check but leaves the download unspent."""
        async with self.db.transaction() as session:
            release = (
                await session.execute(select(Release).where(Release.id == release_id, Release.tenant_id == actor.tenant_id))
            ).scalar_one_or_none()
            if release is None:
                raise NotFound("no such release")
            if release.released_by != actor.token_id:
                raise Forbidden("only the token that asked for this release may download it")
            now = utcnow()
            if release.downloaded_at is not None:
                raise Gone("this release was already downloaded")
            if release.expires_at <= now:
                raise Gone("this release link has expired")
            media = await self._media(session, actor.tenant_id, release.media_id)
            decision = await self._decide(session, actor, media, release.purpose, now, lock=True)
            if not decision.allowed or (release.rendition == gate.ORIGINAL and decision.outcome != gate.ALLOW):
                raise ConsentRequired(details={"reason": decision.reason if not decision.allowed else "rendition_changed"})
            if claim:
                claimed = await session.execute(
                    update(Release).where(Release.id == release.id, Release.downloaded_at.is_(None)).values(downloaded_at=now)
                )
                if cast("CursorResult[Any]", claimed).rowcount != 1:
                    raise Gone("this release was already downloaded")
            if release.rendition == gate.ORIGINAL:
                blob = await self._blob(session, media.id, ORIGINAL)
                ref, mime = sealed_ref(blob), blob.mime
            elif release.blob_id is None:
                raise Gone("this release's rendition is no longer available")
            else:
                ref = SealedRef(id=release.blob_id, tenant_id=release.tenant_id, patient_id=release.patient_id,
                                plain_size=release.blob_size or 0)
                mime = release.mime
            await self.audit.append(session, AuditEvent.of(actor, "release.download" if claim else "release.check",
                                                           patient_id=release.patient_id,
                                                           media_id=release.media_id, release_id=release.id))
        return Download(ref=ref, mime=mime, filename=f"{secrets.token_hex(12)}.{EXTENSIONS.get(mime, 'bin')}", release=release,
                        claimed=claim)

    async def stream(self, download: Download) -> AsyncIterator[bytes]:
        return await self.sealed.stream(download.ref)

    async def finish_download(self, download: Download) -> None:
        """After the one download (complete or not): the release's own rendition goes."""
        if download.claimed and download.release.rendition == gate.DEIDENTIFIED:
            await shred_rendition(self.db, self.sealed, download.release)

    async def shred_expired(self, *, now: datetime | None = None) -> int:
        """Shred the renditions of releases whose link expired unused (a periodic job)."""
        now = now or utcnow()
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Release).where(Release.blob_id.is_not(None),
                                          or_(Release.expires_at <= now, Release.downloaded_at.is_not(None))).limit(500)
                )
            ).scalars().all()
        for release in rows:
            await shred_rendition(self.db, self.sealed, release)
        return len(rows)

    # -- the release list (recall) ---------------------------------------------------------
    async def page(self, actor: Actor, *, media_id: str | None, patient_id: str | None, cursor: str | None,
                   limit: int) -> ReleasePage:
        query = select(Release).where(Release.tenant_id == actor.tenant_id)
        async with self.db.session() as session:
            if patient_id is not None:
                await self.patients.load(session, actor, patient_id, allow_erased=True)
                query = query.where(Release.patient_id == patient_id)
            if media_id is not None:
                await self._media(session, actor.tenant_id, media_id)
                query = query.where(Release.media_id == media_id)
            if cursor is not None:
                after = await session.get(Release, cursor)
                if after is None or after.tenant_id != actor.tenant_id:
                    raise NotFound("no such cursor", details={"field": "cursor"})
                query = query.where(or_(Release.created_at > after.created_at,
                                        and_(Release.created_at == after.created_at, Release.id > after.id)))
            rows = (await session.execute(query.order_by(Release.created_at, Release.id).limit(limit + 1))).scalars().all()
        more = len(rows) > limit
        rows = rows[:limit]
        items: list[ReleaseView] = [await release_view(self.keys, r) for r in rows]
        if actor.role == "marketing":  # marketing works with media, never with patients
            items = [ReleaseView.model_validate(item.model_dump(exclude={"patient_id"})) for item in items]
        await self.audit.record(AuditEvent.of(actor, "release.list", patient_id=patient_id, media_id=media_id, count=str(len(items))))
        return ReleasePage(items=items, next_cursor=rows[-1].id if more else None)


def json_boxes(media: Media) -> list[list[int]]:
    return [list(box) for box in facts_of(media).face_boxes]


def scale_boxes(boxes: list[list[int]], full: tuple[int, int], small: tuple[int, int]) -> list[list[int]]:
    """The full image's boxes scaled to a smaller rendition, grown outward to whole pixels."""
    (width, height), (tw, th) = full, small
    sx, sy = (tw / width, th / height) if width and height else (1.0, 1.0)
    scaled = []
    for x, y, w, h in boxes:
        left, top = math.floor(x * sx), math.floor(y * sy)
        scaled.append([left, top, math.ceil((x + w) * sx) - left, math.ceil((y + h) * sy) - top])
    return scaled
