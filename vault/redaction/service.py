"""Release policy and redaction review: a person approves the exact rectangles, on the
exact rendition that goes out, before any de-identified release (policy ``review``).

Rendering happens once per digest (:meth:`RedactionService.rendered`): the stored original
is read, the rectangles filled at full resolution in a decoder worker, and the redacted
JPEG and its 256 px thumbnail are stored sealed (``media_blobs`` renditions ``redacted``
and ``redacted256``). The reviewer's preview, the approval, marketing's thumbnails and
every release use those stored bytes; nothing is redacted per request. A change of boxes
(or of the detector's findings, the original or the renderer) changes the digest: the
approval no longer holds, and the next view renders again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent import gate
from vault.consent.models import ConsentRecord
from vault.consent.service import load_events
from vault.db import Database, new_id, utcnow
from vault.db.tenancy import owned
from vault.errors import Conflict, DecoderFailed, Forbidden, NotReady, ValidationFailed, VaultError
from vault.media.models import ORIGINAL, PHOTO, READY, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.media.service import MediaService, sealed_ref
from vault.patients.models import ACTIVE, Patient
from vault.pipeline.renderer import RENDERER_VERSION
from vault.pipeline.sanitize import SANITIZERS
from vault.redaction.models import AUTO, REVIEW, Redaction, RedactionApproval, ReleasePolicy
from vault.redaction.responses import ApprovalView, PolicyView, RedactionView, ReviewItem, ReviewPage
from vault.redaction.state import (
    RENDITION_FULL, RENDITION_THUMB, ReviewState, current_digest, detected, digest_of, fill_rects, gate_facts,
    original_hmac,
)
from vault.sealed import SealedBlobs, SealedRef

MAX_BOXES = 500
_SCAN_BATCH = 200
_SCAN_BUDGET = 2000
_RENDER_ATTEMPTS = 3


@dataclass(frozen=True)
class Rendered:
    """The stored redacted renditions of one photo, for ``digest``."""

    media: Media
    redaction: Redaction
    digest: str
    full: SealedRef
    thumb: SealedRef


def orientation_of(data: bytes, mime: str) -> int:
    """The EXIF orientation the stored original carries (a container walk, no decode)."""
    sanitizer = SANITIZERS.get(mime)
    if sanitizer is None:
        raise DecoderFailed(details={"check": "stored.type"})
    try:
        return int(sanitizer.sanitize(data).orientation or 1)
    except VaultError:
        raise DecoderFailed(details={"check": "stored.container"}) from None


def approval_view(a: RedactionApproval) -> ApprovalView:
    return ApprovalView(id=a.id, digest=a.digest, rects=json.loads(a.rects), approved_by=a.approved_by,
                        approved_at=a.approved_at.isoformat())


class RedactionService:
    def __init__(self, db: Database, audit: AuditLog, sealed: SealedBlobs, media: MediaService,
                 pipeline: PhotoPipeline) -> None:
        self.db = db
        self.audit = audit
        self.sealed = sealed
        self.media = media  # tenant, erasure and deletion checks of a media path
        self.pipeline = pipeline

    # -- policy ----------------------------------------------------------------------------
    async def policy(self, actor: Actor) -> PolicyView:
        async with self.db.session() as session:
            row = await session.get(ReleasePolicy, actor.tenant_id)
        await self.audit.record(AuditEvent.of(actor, "release_policy.read"))
        if row is None:
            return PolicyView(deidentified=REVIEW, updated_by=None, updated_at=None)
        return PolicyView(deidentified=row.deidentified, updated_by=row.updated_by,
                          updated_at=row.updated_at.isoformat())

    async def set_policy(self, actor: Actor, deidentified: str) -> PolicyView:
        if deidentified not in (REVIEW, AUTO):
            raise ValidationFailed(details={"errors": [{"field": "deidentified", "problem": "unknown"}]})
        async with self.db.transaction() as session:
            row = await session.get(ReleasePolicy, actor.tenant_id, with_for_update=True)
            if row is None:
                row = ReleasePolicy(tenant_id=actor.tenant_id)
                session.add(row)
            row.deidentified, row.updated_by, row.updated_at = deidentified, actor.token_id, utcnow()
            await session.flush()
            await self.audit.append(session, AuditEvent.of(actor, "release_policy.write", deidentified=deidentified))
        return PolicyView(deidentified=row.deidentified, updated_by=row.updated_by,
                          updated_at=row.updated_at.isoformat())

    # -- loading ---------------------------------------------------------------------------
    async def _photo(self, session: AsyncSession, actor: Actor, media_id: str, *, lock: bool = False) -> Media:
        media = await self.media.load(session, actor, media_id, lock=lock)  # 404 other tenant, 410 erased/deleted
        if media.kind != PHOTO:
            raise Conflict("a video is never released de-identified", details={"kind": media.kind})
        if media.status != READY:
            raise NotReady(details={"status": media.status})
        return media

    @staticmethod
    async def _blobs(session: AsyncSession, media_id: str) -> dict[str, MediaBlob]:
        rows = (await session.execute(select(MediaBlob).where(
            MediaBlob.media_id == media_id, MediaBlob.rendition.in_([ORIGINAL, RENDITION_FULL, RENDITION_THUMB])
        ))).scalars()
        return {b.rendition: b for b in rows}

    async def _facts(self, media: Media, data: bytes, mime: str) -> tuple[str, int]:
        """The original's keyed digest and EXIF orientation, as the redaction digest covers them."""
        return await original_hmac(self.sealed.keys, media.tenant_id, data), orientation_of(data, mime)

    # -- rendering, once per digest ----------------------------------------------------------
    async def rendered(self, actor: Actor, media_id: str) -> Rendered:
        """The stored redacted renditions for the redaction as it is now; rendered here
        (in a decoder worker) only when none exist for the current digest."""
        for _ in range(_RENDER_ATTEMPTS):
            async with self.db.session() as session:
                media = await self._photo(session, actor, media_id)
                redaction = await session.get(Redaction, media.id)
                blobs = await self._blobs(session, media.id)
            original = blobs.get(ORIGINAL)
            if original is None:
                raise NotReady(details={"status": "no_original"})
            digest = current_digest(media, redaction, original.id)
            if (redaction is not None and digest is not None and redaction.rendered_digest == digest
                    and RENDITION_FULL in blobs and RENDITION_THUMB in blobs):
                return Rendered(media, redaction, digest, sealed_ref(blobs[RENDITION_FULL]), sealed_ref(blobs[RENDITION_THUMB]))
            done = await self._render(actor, media, redaction, original)
            if done is not None:
                return done
        raise Conflict("the redaction kept changing while it was rendered; try again")

    async def _render(self, actor: Actor, media: Media, redaction: Redaction | None, original: MediaBlob) -> Rendered | None:
        data = await self.sealed.read(sealed_ref(original))
        keyed, orientation = await self._facts(media, data, original.mime)
        rects, _ = fill_rects(media, redaction)
        digest = digest_of(original_hmac=keyed, orientation=orientation, rects=rects,
                           detector_version=detected(media).version)
        full, thumb = await self.pipeline.render_redaction(data, rects, width=media.width or 0, height=media.height or 0)
        del data
        new = [await self.sealed.put_bytes(media.tenant_id, media.patient_id, full),
               await self.sealed.put_bytes(media.tenant_id, media.patient_id, thumb)]
        old: list[SealedRef] = []
        try:
            async with self.db.transaction() as session:
                media = await owned(session, Media, media.id, actor.tenant_id, lock=True, what="media")
                row = await session.get(Redaction, media.id)
                again = digest_of(original_hmac=keyed, orientation=orientation, rects=fill_rects(media, row)[0],
                                  detector_version=detected(media).version)
                if again != digest:
                    raise _Raced()
                blobs = await self._blobs(session, media.id)
                if row is not None and row.rendered_digest == digest and RENDITION_FULL in blobs and RENDITION_THUMB in blobs:
                    raise _Raced()  # another request rendered the same: use theirs
                if row is None:
                    row = Redaction(media_id=media.id, tenant_id=media.tenant_id, patient_id=media.patient_id)
                    session.add(row)
                old = [sealed_ref(b) for r, b in blobs.items() if r != ORIGINAL]
                await session.execute(delete(MediaBlob).where(MediaBlob.media_id == media.id,
                                                              MediaBlob.rendition.in_([RENDITION_FULL, RENDITION_THUMB])))
                for rendition, ref in zip((RENDITION_FULL, RENDITION_THUMB), new, strict=True):
                    session.add(MediaBlob(id=ref.id, media_id=media.id, tenant_id=media.tenant_id, patient_id=media.patient_id,
                                          rendition=rendition, mime="image/jpeg", plain_size=ref.plain_size))
                row.original_blob_id, row.original_hmac, row.orientation = original.id, keyed, orientation
                row.rendered_digest, row.updated_at = digest, utcnow()
                await session.flush()
                await self.audit.append(session, AuditEvent.of(actor, "redaction.render", patient_id=media.patient_id,
                                                               media_id=media.id, digest=digest))
        except _Raced:
            for ref in new:
                await self.sealed.destroy(ref)
            return None
        except BaseException:
            for ref in new:
                await self.sealed.destroy(ref)
            raise
        for ref in old:  # renditions of a digest nobody can approve any more
            await self.sealed.destroy(ref)
        return Rendered(media, row, digest, new[0], new[1])

    # -- the reviewer's view ---------------------------------------------------------------
    async def view(self, actor: Actor, media_id: str) -> RedactionView:
        done = await self.rendered(actor, media_id)
        async with self.db.session() as session:
            state = (await gate_facts(session, actor.tenant_id, [done.media]))[done.media.id][1]
        await self.audit.record(AuditEvent.of(actor, "redaction.read", patient_id=done.media.patient_id,
                                              media_id=done.media.id, digest=done.digest))
        return self._view(done.media, done.redaction, done.digest, state.approval if state.digest == done.digest else None)

    async def _described(self, actor: Actor, media_id: str) -> RedactionView:
        """The state without rendering: the original's facts are read (no decode) when
        unknown; the preview link renders on first use."""
        async with self.db.session() as session:
            media = await self._photo(session, actor, media_id)
            redaction = await session.get(Redaction, media.id)
            original = (await self._blobs(session, media.id)).get(ORIGINAL)
        if original is None:
            raise NotReady(details={"status": "no_original"})
        if current_digest(media, redaction, original.id) is None:
            data = await self.sealed.read(sealed_ref(original))
            keyed, orientation = await self._facts(media, data, original.mime)
            del data
            async with self.db.transaction() as session:
                await owned(session, Media, media.id, actor.tenant_id, lock=True, what="media")  # one writer per photo
                row = await session.get(Redaction, media.id, with_for_update=True)
                if row is None:
                    row = Redaction(media_id=media.id, tenant_id=media.tenant_id, patient_id=media.patient_id)
                    session.add(row)
                row.original_blob_id, row.original_hmac, row.orientation = original.id, keyed, orientation
        async with self.db.session() as session:
            media = await self._photo(session, actor, media_id)
            facts, state = (await gate_facts(session, actor.tenant_id, [media]))[media.id]
        assert state.redaction is not None and state.digest is not None
        return self._view(media, state.redaction, state.digest, state.approval)

    def _view(self, media: Media, redaction: Redaction, digest: str, approval: RedactionApproval | None) -> RedactionView:
        rects, source = fill_rects(media, redaction)
        state = "identifiable" if media.face_review == "identifiable" else ("approved" if approval else "pending")
        return RedactionView(
            media_id=media.id, width=media.width or 0, height=media.height or 0, boxes=rects,
            source=source,
            digest=digest, orientation=redaction.orientation or 1, renderer=RENDERER_VERSION,
            detector=detected(media).version, state=state,
            approval=approval_view(approval) if approval else None,
            preview_url=f"/v1/media/{media.id}/redaction/preview?digest={digest}",
        )

    async def preview(self, actor: Actor, media_id: str, *, digest: str | None) -> Rendered:
        """The full-resolution redacted JPEG exactly as released (409 when ``digest`` is stale)."""
        done = await self.rendered(actor, media_id)
        if digest is not None and digest != done.digest:
            raise Conflict("the redaction changed since this preview was linked", details={"digest": done.digest})
        await self.audit.record(AuditEvent.of(actor, "redaction.preview", patient_id=done.media.patient_id,
                                              media_id=done.media.id, digest=done.digest))
        return done

    async def stream(self, done: Rendered):  # noqa: ANN201 - an async iterator of bytes
        return await self.sealed.stream(done.full)

    # -- changes -----------------------------------------------------------------------------
    async def update(self, actor: Actor, media_id: str, *, boxes: list[list[int]] | None,
                     identifiable: bool | None) -> RedactionView:
        """Replace the boxes and/or set or clear the "identifiable, cannot be
        de-identified" mark (clearing it: dpo only). Any change voids the approval."""
        old: list[SealedRef] = []
        async with self.db.transaction() as session:
            media = await self._photo(session, actor, media_id, lock=True)
            if identifiable is False and media.face_review == "identifiable" and actor.role != "dpo":
                raise Forbidden("only a data protection officer may clear an 'identifiable' mark")
            if boxes is not None:
                self._check_boxes(boxes, media.width or 0, media.height or 0)
            row = await session.get(Redaction, media.id, with_for_update=True)
            if row is None:
                row = Redaction(media_id=media.id, tenant_id=media.tenant_id, patient_id=media.patient_id)
                session.add(row)
            before = fill_rects(media, row)[0], media.face_review
            if boxes is not None:
                row.boxes, row.boxes_by = json.dumps([list(b) for b in boxes]), actor.token_id
            if identifiable is True:
                media.face_review, media.reviewed_by = "identifiable", actor.token_id
            elif identifiable is False and media.face_review == "identifiable":
                media.face_review, media.reviewed_by = None, actor.token_id
            changed = (fill_rects(media, row)[0], media.face_review) != before
            voided = None
            if changed and row.approval_id is not None:
                voided = await session.get(RedactionApproval, row.approval_id, with_for_update=True)
                if voided is not None and voided.voided_at is None:
                    voided.voided_at, voided.voided_by = utcnow(), actor.token_id
                row.approval_id = None
            if changed and boxes is not None:  # the stored renditions show boxes nobody may approve now
                blobs = await self._blobs(session, media.id)
                old = [sealed_ref(b) for r, b in blobs.items() if r != ORIGINAL]
                await session.execute(delete(MediaBlob).where(MediaBlob.media_id == media.id,
                                                              MediaBlob.rendition.in_([RENDITION_FULL, RENDITION_THUMB])))
                row.rendered_digest = None
            row.updated_at = media.updated_at = utcnow()
            await session.flush()
            fields = ",".join(f for f, v in (("boxes", boxes), ("identifiable", identifiable)) if v is not None)
            await self.audit.append(session, AuditEvent.of(
                actor, "redaction.update", patient_id=media.patient_id, media_id=media.id, fields=fields,
                changed=str(changed).lower(), voided_approval=voided.id if voided else None))
        for ref in old:
            await self.sealed.destroy(ref)
        return await self._described(actor, media_id)

    @staticmethod
    def _check_boxes(boxes: list[list[int]], width: int, height: int) -> None:
        if len(boxes) > MAX_BOXES:
            raise ValidationFailed(details={"errors": [{"field": "boxes", "problem": "too_many", "limit": MAX_BOXES}]})
        for index, box in enumerate(boxes):
            x, y, w, h = box
            if x < 0 or y < 0 or w < 1 or h < 1 or x + w > width or y + h > height:
                raise ValidationFailed(details={"errors": [{"field": f"boxes[{index}]", "problem": "outside_the_photo",
                                                            "width": width, "height": height}]})

    async def approve(self, actor: Actor, media_id: str, *, digest: str) -> ApprovalView:
        """Approve what the reviewer saw: 409 unless ``digest`` is the current one."""
        done = await self.rendered(actor, media_id)  # renders only if nobody looked yet
        if digest != done.digest:
            raise Conflict("the redaction changed since you saw it", details={"digest": done.digest})
        async with self.db.transaction() as session:
            media = await self._photo(session, actor, media_id, lock=True)
            if media.face_review == "identifiable":
                raise Conflict("a reviewer marked this photo identifiable: it cannot be released de-identified")
            row = await session.get(Redaction, media.id, with_for_update=True)
            blobs = await self._blobs(session, media.id)
            original = blobs.get(ORIGINAL)
            now_digest = current_digest(media, row, original.id if original else None)
            if row is None or now_digest != digest or row.rendered_digest != digest:
                raise Conflict("the redaction changed since you saw it", details={"digest": now_digest})
            if row.approval_id is not None:
                previous = await session.get(RedactionApproval, row.approval_id, with_for_update=True)
                if previous is not None and previous.voided_at is None:
                    previous.voided_at, previous.voided_by = utcnow(), actor.token_id
            approval = RedactionApproval(
                id=new_id(), tenant_id=media.tenant_id, media_id=media.id, patient_id=media.patient_id, digest=digest,
                rects=json.dumps(fill_rects(media, row)[0]), approved_by=actor.token_id, approved_at=utcnow(),
            )
            session.add(approval)
            row.approval_id, row.updated_at = approval.id, utcnow()
            await session.flush()
            await self.audit.append(session, AuditEvent.of(actor, "redaction.approve", patient_id=media.patient_id,
                                                           media_id=media.id, approval_id=approval.id, digest=digest))
        return approval_view(approval)

    # -- the review queue -------------------------------------------------------------------
    async def reviews(self, actor: Actor, *, state: str, cursor: str | None, limit: int) -> ReviewPage:
        """Photos covered by a de-identified grant that an approval would make releasable:
        ``pending`` (no approval holds) or ``approved``; keyset pages by media id."""
        now = utcnow()
        items: list[ReviewItem] = []
        position, more, scanned = cursor, True, 0
        async with self.db.session() as session:
            while more and len(items) < limit and scanned < _SCAN_BUDGET:
                rows = await self._candidates(session, actor.tenant_id, position, _SCAN_BATCH)
                more = len(rows) == _SCAN_BATCH
                events = await load_events(session, actor.tenant_id, {m.patient_id for m in rows})
                facts = await gate_facts(session, actor.tenant_id, rows)
                for index, media in enumerate(rows):
                    scanned, position = scanned + 1, media.id
                    item = self._review_item(media, facts[media.id], events.get(media.patient_id, []), now)
                    if item is not None and item.state == state:
                        items.append(item)
                        if len(items) >= limit:
                            more = more or index < len(rows) - 1
                            break
        await self.audit.record(AuditEvent.of(actor, "redaction.list", state=state, count=str(len(items))))
        return ReviewPage(items=items, next_cursor=position if more else None)

    @staticmethod
    def _review_item(media: Media, facts_state: tuple[gate.MediaFacts, ReviewState], events: list[gate.ConsentEvent],
                     now: datetime) -> ReviewItem | None:
        facts, state = facts_state
        if media.face_review == "identifiable":
            return None  # marked: nothing to approve until a dpo clears the mark
        approved = dataclasses.replace(facts, review_required=True, redaction_approved=True)
        purposes = [p for p in gate.PURPOSES if gate.decide(approved, p, now, events, ACTIVE).outcome == gate.ALLOW_DEIDENTIFIED]
        if not purposes:
            return None
        approval = state.approval
        return ReviewItem(media_id=media.id, patient_id=media.patient_id, state="approved" if approval else "pending",
                          purposes=purposes, approval_id=approval.id if approval else None,
                          approved_at=approval.approved_at.isoformat() if approval else None)

    @staticmethod
    async def _candidates(session: AsyncSession, tenant_id: str, after: str | None, limit: int) -> list[Media]:
        deidentified_grant = exists(select(ConsentRecord.id).where(
            ConsentRecord.patient_id == Media.patient_id, ConsentRecord.kind == gate.GRANT, ConsentRecord.identifiable.is_(False)))
        query = (select(Media).join(Patient, Patient.id == Media.patient_id)
                 .where(Media.tenant_id == tenant_id, Media.kind == PHOTO, Media.status == READY, Patient.status == ACTIVE,
                        deidentified_grant))
        if after:
            query = query.where(Media.id > after)
        return list((await session.execute(query.order_by(Media.id).limit(limit))).scalars())


class _Raced(Exception):
    """The redaction changed (or was rendered by another request) while we rendered."""
