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

import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn, cast

from sqlalchemy import CursorResult, and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keys.errors import KeyDestroyed
from keys.store import KeyStore
from vault import idempotent, signedurls
from vault.db.tenancy import owned
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent import gate
from vault.consent.models import ConsentRecord, Release
from vault.consent.responses import ReleasePage, ReleaseView
from vault.consent.service import load_events, release_view, shred_rendition
from vault.db import Database, new_id, utcnow
from vault.errors import Conflict, ConsentRequired, Forbidden, Gone, NotFound, ValidationFailed
from vault.media.files import extension
from vault.media.models import ORIGINAL, READY, THUMB_256, Media, MediaBlob
from vault.media.processing import PhotoPipeline
from vault.media.reads import etag_of, none_match
from vault.media.service import sealed_ref
from vault.patients.models import ACTIVE, Patient
from vault.patients.service import PatientService
from vault.treatments.models import Treatment
from vault.redaction import handles
from vault.redaction.models import ReleaseHandle
from vault.redaction.service import RedactionService
from vault.redaction.state import DETECTOR_MARGIN, ReviewState, gate_facts
from vault.sealed import SealedBlobs, SealedRef

LINK_TTL = timedelta(minutes=15)  # a release's download link
THUMBNAIL_TTL = timedelta(minutes=10)  # a signed thumbnail URL in the listing
REDACTION_MARGIN = DETECTOR_MARGIN  # of each detected face box's width/height, on every side
_SCAN_BATCH = 200
_SCAN_BUDGET = 2000  # candidate rows one listing request may examine
#: reasons only the de-identified branch of the gate gives
_DEIDENTIFIED_REASONS = frozenset({"needs_review", "video_not_deidentifiable"})
#: what marketing is told when a de-identified item is denied for any reason but a
#: missing review: one person's withdrawal, restriction or erasure must not show up as
#: the same telling reason on all of their items
NOT_RELEASABLE = "not_releasable"
#: the recall list's states (GET /v1/releases?state=): open recalls, and those taken down
RECALLED, TAKEN_DOWN = "recalled", "taken_down"


@dataclass(frozen=True)
class ReleaseThumbnail:
    """A signed thumbnail to send: ``data`` is None when the client's tag still matches (304)."""

    data: bytes | None
    etag: str


def thumbnail_purpose(purpose: str) -> str:
    return f"release-thumbnail:{purpose}"


def refusal(decision: gate.Decision, *, by_handle: bool) -> ConsentRequired:
    """The 403 marketing gets. By handle (a de-identified item), only ``needs_review`` is
    told as it is; by media id (an identifiable item), nothing of the de-identified
    branch is told (it would say the person also agreed to de-identified use)."""
    reason = decision.reason if not decision.allowed else "rendition_changed"
    if by_handle and reason != "needs_review":
        reason = NOT_RELEASABLE
    elif not by_handle and (decision.outcome == gate.ALLOW_DEIDENTIFIED or reason in _DEIDENTIFIED_REASONS):
        reason = NOT_RELEASABLE
    return ConsentRequired(details={"reason": reason})


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
    thumbnail; the HTTP layer makes them a URL. A de-identified item has a ``handle``
    and nothing else that names or groups it (no media, treatment, consent or phase)."""

    item: str  # the media id (identifiable) or the handle (de-identified): the URL's path part
    purpose: str
    rendition: str
    kind: str
    phase: str | None
    treatment_id: str | None
    consent_id: str | None
    thumbnail: signedurls.SignedParams
    thumbnail_expires_at: datetime
    #: identifiable items only (the web gallery's filters): when the photo was taken in,
    #: and its treatment's name and date; None for a de-identified item, never grouped or dated
    created_at: datetime | None = None
    treatment_name: str | None = None
    treatment_on: date | None = None

    @property
    def deidentified(self) -> bool:
        return self.rendition == gate.DEIDENTIFIED


@dataclass(frozen=True)
class Filters:
    """The releasable listing's filters. ``rendition`` keeps one kind of item; the
    identifiable-only ones (``treatment``, ``phase``, ``taken_from``, ``taken_to``) need
    ``rendition="original"`` (the HTTP models refuse them otherwise): a de-identified item
    is filtered only by the tenant's treatment-type vocabulary and by year."""

    rendition: str | None = None
    treatment_type: str | None = None
    year: int | None = None
    treatment: str | None = None  # a part of the treatment's name (sealed: matched after opening it)
    phase: str | None = None
    taken_from: date | None = None
    taken_to: date | None = None

    def __post_init__(self) -> None:
        identifiable_only = (self.treatment, self.phase, self.taken_from, self.taken_to)
        if self.rendition != gate.ORIGINAL and any(v is not None for v in identifiable_only):
            raise ValidationFailed("treatment, phase and dates filter identifiable items only (rendition=original)",
                                   details={"reason": "identifiable_only_filter"})

    def narrow(self, query: Any) -> Any:
        """The SQL part: only ever drops rows (the gate still decides every one kept)."""
        if self.treatment_type is not None:
            query = query.where(Media.treatment_id.in_(select(Treatment.id).where(Treatment.type_id == self.treatment_type)))
        start, end = self._window()
        if start is not None:
            query = query.where(Media.created_at >= start)
        if end is not None:
            query = query.where(Media.created_at < end)
        if self.phase is not None:
            query = query.where(Media.phase == self.phase)
        return query

    def _window(self) -> tuple[datetime | None, datetime | None]:
        def at(day: date) -> datetime:
            return datetime(day.year, day.month, day.day, tzinfo=UTC)

        start = at(self.taken_from) if self.taken_from else None
        end = at(self.taken_to) + timedelta(days=1) if self.taken_to else None
        if self.year is not None:
            start = max(filter(None, (start, at(date(self.year, 1, 1)))))
            end = min(filter(None, (end, at(date(self.year + 1, 1, 1)))))
        return start, end


def _named(media: Media, decision: gate.Decision, filters: Filters, named: dict[str, tuple[str | None, date]]) -> bool:
    """The treatment-name filter (identifiable items only; the name is sealed)."""
    if filters.treatment is None:
        return True
    if decision.rendition != gate.ORIGINAL or media.treatment_id is None:
        return False
    name, _ = named.get(media.treatment_id, (None, None))
    return filters.treatment.casefold() in (name or "").casefold()


class _Replayed(Exception):
    def __init__(self, release_id: str) -> None:
        self.release_id = release_id


@dataclass(frozen=True)
class MadeRelease:
    """A release just made; the HTTP layer adds its download URL."""

    id: str
    item: str  # media id or handle, as asked
    purpose: str
    rendition: str
    consent_id: str | None
    expires_at: datetime


@dataclass(frozen=True)
class _Target:
    media: Media
    handle: str | None  # set when marketing named a de-identified item by its handle


class ReleaseService:
    def __init__(self, db: Database, audit: AuditLog, keys: KeyStore, sealed: SealedBlobs, patients: PatientService,
                 pipeline: PhotoPipeline, *, redactions: RedactionService, staff_links: signedurls.StaffBounds) -> None:
        self.db = db
        self.staff_links = staff_links  # how long a link a person asked for stays theirs
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.pipeline = pipeline
        self.redactions = redactions  # the stored redacted renditions, rendered once per digest

    # -- the gate with fresh rows --------------------------------------------------------
    async def _media(self, session: AsyncSession, tenant_id: str, media_id: str) -> Media:
        return await owned(session, Media, media_id, tenant_id, what="media")

    async def _target(self, session: AsyncSession, actor: Actor, item: str, purpose: str) -> _Target:
        """A media id or a handle; a handle names one purpose only."""
        if handles.is_handle(item):
            row = await handles.resolve(session, actor.tenant_id, item)
            if row.purpose != purpose:
                raise NotFound("no such item")
            return _Target(await self._media(session, actor.tenant_id, row.media_id), row.handle)
        return _Target(await self._media(session, actor.tenant_id, item), None)

    async def _decide(self, session: AsyncSession, actor: Actor, media: Media, purpose: str, now: datetime,
                      *, lock: bool = False, by_handle: bool = False) -> tuple[gate.Decision, ReviewState]:
        # By media id, an erased patient's media answer 410 on every path, as elsewhere; by
        # handle the gate's denial is all marketing learns. The gate denies erased patients
        # on its own either way (it is the one place release is decided).
        patient = await self.patients.load(session, actor, media.patient_id, lock=lock, allow_erased=by_handle)
        events = (await load_events(session, actor.tenant_id, [media.patient_id])).get(media.patient_id, [])
        facts, state = (await gate_facts(session, actor.tenant_id, [media]))[media.id]
        return gate.decide(facts, purpose, now, events, patient.status), state

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
                         limit: int, details: bool = False, filters: Filters | None = None) -> tuple[list[Releasable], str | None]:
        """What the gate allows now, one item per (media, purpose), ordered by the random
        per-purpose handle (never by media id or time); the cursor is sealed. ``details``
        (the web gallery): identifiable items also carry their treatment's name and date
        and when they were taken in. ``filters`` narrow it (:class:`Filters`)."""
        filters = filters or Filters()
        purposes = [purpose] if purpose else list(gate.PURPOSES)
        await handles.ensure(self.db, actor.tenant_id, purposes)
        after = await handles.open_cursor(self.keys, actor.tenant_id, cursor) if cursor else None
        now = utcnow()
        items: list[Releasable] = []
        scanned, position, more = 0, after, True
        async with self.db.session() as session:
            while more and len(items) < limit and scanned < _SCAN_BUDGET:
                rows = await self._candidates(session, actor.tenant_id, purposes, position, _SCAN_BATCH, filters)
                more = len(rows) == _SCAN_BATCH
                events = await load_events(session, actor.tenant_id, {m.patient_id for _, _, m, _ in rows})
                facts = await gate_facts(session, actor.tenant_id, list({m.id: m for _, _, m, _ in rows}.values()))
                named = await self._treatments(session, actor.tenant_id, [m for _, _, m, _ in rows]) \
                    if details or filters.treatment is not None else {}
                for index, (handle, p, media, status) in enumerate(rows):
                    scanned, position = scanned + 1, handle
                    decision = gate.decide(facts[media.id][0], p, now, events.get(media.patient_id, []), status)
                    if decision.allowed and filters.rendition in (None, decision.rendition) \
                            and _named(media, decision, filters, named):
                        items.append(await self._item(actor, media, handle, p, decision, now, details=details,
                                                      treatment=named.get(media.treatment_id or "")))
                    if len(items) >= limit:
                        more = more or index < len(rows) - 1
                        break
        await self.audit.record(AuditEvent.of(actor, "release.list_releasable", purpose=purpose, count=str(len(items))))
        next_cursor = await handles.seal_cursor(self.keys, actor.tenant_id, position) if more and position else None
        return items, next_cursor

    @staticmethod
    async def _candidates(session: AsyncSession, tenant_id: str, purposes: list[str], after: str | None,
                          limit: int, filters: Filters) -> list[tuple[str, str, Media, str]]:
        # Only narrows what the gate would deny anyway (not ready, patient not active, no grant).
        has_grant = exists(select(ConsentRecord.id).where(ConsentRecord.patient_id == Media.patient_id, ConsentRecord.kind == gate.GRANT))
        query = (
            select(ReleaseHandle.handle, ReleaseHandle.purpose, Media, Patient.status)
            .join(Media, Media.id == ReleaseHandle.media_id)
            .join(Patient, Patient.id == Media.patient_id)
            .where(ReleaseHandle.tenant_id == tenant_id, ReleaseHandle.purpose.in_(purposes), Media.tenant_id == tenant_id,
                   Media.status == READY, Patient.status == ACTIVE, has_grant)
        )
        if after:
            query = query.where(ReleaseHandle.handle > after)
        query = filters.narrow(query)
        return [(h, p, m, s) for h, p, m, s in (await session.execute(query.order_by(ReleaseHandle.handle).limit(limit))).all()]

    async def _item(self, actor: Actor, media: Media, handle: str, purpose: str, decision: gate.Decision,
                    now: datetime, *, details: bool = False, treatment: tuple[str | None, date] | None = None) -> Releasable:
        """``details`` (the web gallery): an identifiable item also carries when it was taken
        in, and ``treatment``'s name and date."""
        rendition = decision.rendition
        assert rendition is not None  # an allowed decision always names its rendition
        deidentified = rendition == gate.DEIDENTIFIED
        item = handle if deidentified else media.id
        expires_at = now + THUMBNAIL_TTL
        params = await signedurls.sign(self.keys, actor.tenant_id, purpose=thumbnail_purpose(purpose),
                                       resource=f"{item}:{rendition}", token_id=actor.token_id, expires_at=expires_at)
        if deidentified:
            return Releasable(item=item, purpose=purpose, rendition=rendition, kind=media.kind, phase=None, treatment_id=None,
                              consent_id=None, thumbnail=params, thumbnail_expires_at=expires_at)
        name, performed_on = treatment if details and treatment else (None, None)
        return Releasable(item=item, purpose=purpose, rendition=rendition, kind=media.kind, phase=media.phase,
                          treatment_id=media.treatment_id, consent_id=decision.consent_id, thumbnail=params,
                          thumbnail_expires_at=expires_at, created_at=media.created_at if details else None,
                          treatment_name=name, treatment_on=performed_on)

    async def _treatments(self, session: AsyncSession, tenant_id: str,
                          media: list[Media]) -> dict[str, tuple[str | None, date]]:
        """The treatments of a batch of candidates: name (sealed under each patient's key,
        opened with one key read per patient) and date, by treatment id."""
        ids = sorted({m.treatment_id for m in media if m.treatment_id})
        if not ids:
            return {}
        rows = (await session.execute(select(Treatment).where(Treatment.id.in_(ids), Treatment.tenant_id == tenant_id))).scalars().all()
        by_patient: dict[str, list[Treatment]] = {}
        for row in rows:
            by_patient.setdefault(row.patient_id, []).append(row)
        found: dict[str, tuple[str | None, date]] = {}
        for patient_id, treatments in by_patient.items():
            try:
                opened = await self.keys.open_fields(tenant_id, patient_id, table="treatments", column="name",
                                                     sealed={t.id: t.name for t in treatments})
            except KeyDestroyed:
                opened = {}
            for t in treatments:
                found[t.id] = (opened[t.id].decode() if t.id in opened else None, t.performed_on)
        return found

    # -- the signed thumbnail ------------------------------------------------------------
    async def thumbnail(self, *, item: str, purpose: str, rendition: str, params: signedurls.SignedParams,
                        request_id: str, if_none_match: Iterable[str] | None = None) -> ReleaseThumbnail:
        """The 256 px thumbnail of the rendition that would be released. The signature is
        the authorisation; the token must still be live and the gate must still agree.
        A de-identified item's thumbnail is the stored one made from its redacted
        rendition (rendered once, at approval, or on first use under ``auto``). A client
        holding its tag (``if_none_match``) gets ``data=None`` (a 304) only after the same
        checks, the key row and the audit entry."""
        now = utcnow()
        async with self.db.session() as session:
            principal = await signedurls.signer(session, params.token_id, staff=self.staff_links)
        await signedurls.verify(self.keys, principal.tenant_id, purpose=thumbnail_purpose(purpose),
                                resource=f"{item}:{rendition}", params=params, now=now)
        actor = Actor(tenant_id=principal.tenant_id, token_id=principal.token_id, role=principal.role, request_id=request_id)
        if principal.role != "marketing":
            raise Forbidden()
        by_handle = handles.is_handle(item)
        if by_handle != (rendition == gate.DEIDENTIFIED):
            raise Forbidden("the link is not valid")
        async with self.db.session() as session:
            target = await self._target(session, actor, item, purpose)
            media = target.media
            decision, state = await self._decide(session, actor, media, purpose, now, by_handle=by_handle)
        if decision.rendition != rendition:
            await self._denied(actor, media, "release.thumbnail", decision, by_handle=by_handle)
        if rendition == gate.DEIDENTIFIED:
            done = await self.redactions.rendered(actor, media.id)
            if state.approval is not None and state.approval.digest != done.digest:
                await self._denied(actor, media, "release.thumbnail", gate.Decision(gate.DENY, "needs_review"), by_handle=True)
            ref = done.thumb
            # Per handle and purpose (the stored thumbnail is shared by the photo's purposes):
            # no tag links two purposes' items, or an item to the identifiable view.
            etag = etag_of("deidentified", item, purpose, done.digest)
        else:
            async with self.db.session() as session:
                blob = await self._blob(session, media.id, THUMB_256)
            ref = sealed_ref(blob)
            etag = etag_of(blob.id, rendition)
        key = await self.sealed.open_key(ref)  # 410 once shredded, for a 304 as for a 200
        unchanged = none_match(etag, if_none_match)
        data = None if unchanged else await self.sealed.read(ref, key=key)
        await self.audit.record(AuditEvent.of(actor, "release.thumbnail", outcome="not_modified" if unchanged else "ok",
                                              patient_id=media.patient_id, media_id=media.id, purpose=purpose,
                                              rendition=rendition))
        return ReleaseThumbnail(data=data, etag=etag)

    async def _denied(self, actor: Actor, media: Media, action: str, decision: gate.Decision, *, by_handle: bool) -> NoReturn:
        reason = decision.reason if not decision.allowed else "rendition_changed"
        await self.audit.record(AuditEvent.of(actor, action, outcome="consent_required", patient_id=media.patient_id,
                                              media_id=media.id, reason=reason))
        raise refusal(decision, by_handle=by_handle)

    # -- releasing ---------------------------------------------------------------------------
    async def release(self, actor: Actor, item: str, *, purpose: str, recipient: str,
                      idempotency_key: str | None = None) -> MadeRelease:
        """Release by media id (the stripped original, under identifiable consent) or by
        handle (the de-identified rendition: under policy ``review`` the approved one).
        A replayed ``Idempotency-Key`` answers with the first release (no second release,
        so no second recall entry)."""
        key = await idempotent.claim(self.keys, actor, f"release|{item}", idempotency_key,
                                     {"purpose": purpose, "recipient": recipient})
        async with self.db.session() as session:
            target = await self._target(session, actor, item, purpose)
            first = await idempotent.replayed(session, key)
            if first is not None:
                return await self._made(session, actor, first, item)
            media, by_handle = target.media, target.handle is not None
            decision, state = await self._decide(session, actor, media, purpose, utcnow(), by_handle=by_handle)
            wanted = gate.ALLOW_DEIDENTIFIED if by_handle else gate.ALLOW
            original = await self._blob(session, media.id, ORIGINAL) if decision.outcome == wanted else None
        if original is None:
            await self._denied(actor, media, "release.create", decision, by_handle=by_handle)
        made: SealedRef | None = None
        approval_id = state.approval.id if state.approval is not None else None
        if by_handle:
            made = await self._deidentified(actor, media, state)
        try:
            async with self.db.transaction() as session:
                # Decide again under the patient's row lock: a withdrawal holds it too.
                media = await self._media(session, actor.tenant_id, media.id)
                now = utcnow()
                again, state = await self._decide(session, actor, media, purpose, now, lock=True, by_handle=by_handle)
                if (first := await idempotent.replayed(session, key)) is not None:  # a concurrent retry won
                    raise _Replayed(first)
                still = state.approval.id if state.approval is not None else None
                if again.outcome != decision.outcome or still != approval_id:
                    raise refusal(again if again.outcome != decision.outcome else gate.Decision(gate.DENY, "needs_review"),
                                  by_handle=by_handle)
                release = Release(
                    id=new_id(), tenant_id=actor.tenant_id, patient_id=media.patient_id, media_id=media.id, purpose=purpose,
                    rendition=again.rendition, consent_id=again.consent_id, released_by=actor.token_id, created_at=now,
                    expires_at=now + LINK_TTL, blob_id=made.id if made else None, blob_size=made.plain_size if made else None,
                    mime="image/jpeg" if made else original.mime, approval_id=approval_id if by_handle else None,
                    handle=target.handle,
                )
                release.recipient = await self.keys.seal_field(actor.tenant_id, media.patient_id, table="releases",
                                                               column="recipient", row_id=release.id, value=recipient)
                session.add(release)
                idempotent.remember(session, key, release.id)
                await session.flush()
                await self.audit.append(session, AuditEvent.of(actor, "release.create", patient_id=media.patient_id, media_id=media.id,
                                                               release_id=release.id, purpose=purpose, rendition=release.rendition,
                                                               approval_id=release.approval_id))
        except _Replayed as replay:
            if made is not None:
                await self.sealed.destroy(made)
            async with self.db.session() as session:
                return await self._made(session, actor, replay.release_id, item)
        except BaseException:
            if made is not None:
                await self.sealed.destroy(made)
            raise
        return MadeRelease(id=release.id, item=item, purpose=purpose, rendition=release.rendition,
                           consent_id=release.consent_id if not by_handle else None, expires_at=release.expires_at)

    async def _made(self, session: AsyncSession, actor: Actor, release_id: str, item: str) -> MadeRelease:
        """The release an Idempotency-Key already made, as it was answered (audited as a replay)."""
        release = await session.get_one(Release, release_id)
        await self.audit.record(AuditEvent.of(actor, "release.create.replay", patient_id=release.patient_id,
                                              media_id=release.media_id, release_id=release.id))
        return MadeRelease(id=release.id, item=item, purpose=release.purpose, rendition=release.rendition,
                           consent_id=release.consent_id if release.rendition != gate.DEIDENTIFIED else None,
                           expires_at=release.expires_at)

    async def _deidentified(self, actor: Actor, media: Media, state: ReviewState) -> SealedRef:
        """This release's own copy of the stored redacted rendition: under ``review`` the
        one rendered for the approval's digest (its rectangles, exactly as the reviewer
        saw it), under ``auto`` the one for the current digest (rendered now if needed)."""
        done = await self.redactions.rendered(actor, media.id)
        if state.approval is not None and state.approval.digest != done.digest:
            raise refusal(gate.Decision(gate.DENY, "needs_review"), by_handle=True)
        data = await self.sealed.read(done.full)
        ref: SealedRef = await self.sealed.put_bytes(media.tenant_id, media.patient_id, data)
        return ref

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
            by_handle = release.rendition == gate.DEIDENTIFIED
            decision, state = await self._decide(session, actor, media, release.purpose, now, lock=True, by_handle=by_handle)
            wanted = gate.ALLOW_DEIDENTIFIED if by_handle else gate.ALLOW
            if decision.outcome != wanted:
                raise refusal(decision, by_handle=by_handle)
            if release.pair_media_id is not None:  # a composite: its after photo must still be allowed too
                pair = await self._media(session, actor.tenant_id, release.pair_media_id)
                after, _ = await self._decide(session, actor, pair, release.purpose, now, by_handle=by_handle)
                if after.outcome != wanted:
                    raise refusal(after, by_handle=by_handle)
            if by_handle and release.approval_id is not None:
                # The approval this release carries must still hold: a reviewer who changed
                # the boxes since (a face the detector missed) stops the download too.
                if state.approval is None or state.approval.id != release.approval_id:
                    raise refusal(gate.Decision(gate.DENY, "needs_review"), by_handle=True)
            if claim:
                claimed = await session.execute(
                    update(Release).where(Release.id == release.id, Release.downloaded_at.is_(None)).values(downloaded_at=now)
                )
                if cast("CursorResult[Any]", claimed).rowcount != 1:
                    raise Gone("this release was already downloaded")
            if release.rendition == gate.ORIGINAL and release.pair_media_id is None:
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
        return Download(ref=ref, mime=mime, filename=f"{secrets.token_hex(12)}.{extension(mime)}", release=release,
                        claimed=claim)

    async def stream(self, download: Download) -> AsyncIterator[bytes]:
        return await self.sealed.stream(download.ref)

    async def finish_download(self, download: Download) -> None:
        """After the one download (complete or not): the release's own rendition (a
        redacted photo, a composite) goes."""
        if download.claimed and download.release.blob_id is not None:
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
    async def page(self, actor: Actor, *, media_id: str | None, patient_id: str | None, handle: str | None = None,
                   cursor: str | None, limit: int, state: str | None = None) -> ReleasePage:
        """Releases, oldest first. Marketing sees a de-identified release only by its
        handle (no media, patient, consent or approval id), and ``media_id`` finds only
        identifiable releases for it. ``state``: ``recalled`` the open recalls (recalled,
        not yet taken down), ``taken_down`` those recorded as removed."""
        marketing = actor.role == "marketing"
        query = select(Release).where(Release.tenant_id == actor.tenant_id)
        if state == RECALLED:
            query = query.where(Release.recalled_at.is_not(None), Release.taken_down_at.is_(None))
        elif state == TAKEN_DOWN:
            query = query.where(Release.taken_down_at.is_not(None))
        async with self.db.session() as session:
            if patient_id is not None:
                await self.patients.load(session, actor, patient_id, allow_erased=True)
                query = query.where(Release.patient_id == patient_id)
            if media_id is not None:
                await self._media(session, actor.tenant_id, media_id)
                query = query.where(or_(Release.media_id == media_id, Release.pair_media_id == media_id))
                if marketing:
                    query = query.where(Release.rendition == gate.ORIGINAL)
            if handle is not None:
                row = await handles.resolve(session, actor.tenant_id, handle)
                query = query.where(Release.media_id == row.media_id, Release.purpose == row.purpose,
                                    Release.rendition == gate.DEIDENTIFIED)
            if cursor is not None:
                after = await session.get(Release, cursor)
                if after is None or after.tenant_id != actor.tenant_id:
                    raise NotFound("no such cursor", details={"field": "cursor"})
                query = query.where(or_(Release.created_at > after.created_at,
                                        and_(Release.created_at == after.created_at, Release.id > after.id)))
            rows = (await session.execute(query.order_by(Release.created_at, Release.id).limit(limit + 1))).scalars().all()
            more = len(rows) > limit
            rows = rows[:limit]
            named = {r.id: await self._handle_of(session, r) for r in rows}
        items = [await self._view_for(actor, r, named[r.id]) for r in rows]
        await self.audit.record(AuditEvent.of(actor, "release.list", patient_id=patient_id, media_id=media_id, state=state,
                                              count=str(len(items))))
        return ReleasePage(items=items, next_cursor=rows[-1].id if more else None)

    @staticmethod
    async def _handle_of(session: AsyncSession, r: Release) -> str | None:
        if r.rendition != gate.DEIDENTIFIED:
            return None
        return r.handle or await handles.lookup(session, r.tenant_id, r.media_id, r.purpose)

    async def _view_for(self, actor: Actor, r: Release, handle: str | None) -> ReleaseView:
        """One release as this actor may see it: marketing works with media, never with
        patients, and sees a de-identified release by its handle only."""
        view = await release_view(self.keys, r)
        if handle is not None:
            view = view.model_copy(update={"handle": handle})
        if actor.role == "marketing":
            hidden = {"patient_id", "approval_id"} | ({"media_id", "pair_media_id", "consent_id"}
                                                     if r.rendition == gate.DEIDENTIFIED else set())
            view = ReleaseView.model_validate(view.model_dump(exclude=hidden))
        return view

    async def takedown(self, actor: Actor, release_id: str, *, now: datetime | None = None) -> ReleaseView:
        """Record that a recalled release's image was removed: who confirmed it and when.
        404 for another tenant's (or no) release; 409 when it is not recalled or is already
        recorded as taken down (the first confirmation stands)."""
        now = now or utcnow()
        async with self.db.transaction() as session:
            row = await session.get(Release, release_id)
            if row is None or row.tenant_id != actor.tenant_id:
                raise NotFound("no such release")
            if row.recalled_at is None:
                raise Conflict("this release is not recalled", details={"reason": "not_recalled"})
            done = await session.execute(
                update(Release).where(Release.id == row.id, Release.taken_down_at.is_(None))
                .values(taken_down_at=now, taken_down_by=actor.token_id)
            )
            if cast(CursorResult[Any], done).rowcount != 1:
                raise Conflict("this release is already recorded as taken down", details={"reason": "already_taken_down"})
            await session.refresh(row)
            await self.audit.append(session, AuditEvent.of(actor, "release.takedown", patient_id=row.patient_id,
                                                           media_id=row.media_id, release_id=row.id))
            handle = await self._handle_of(session, row)
        return await self._view_for(actor, row, handle)
