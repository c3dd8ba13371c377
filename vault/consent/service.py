"""Consent use cases: record a grant (with its evidence), read the history, withdraw
(which returns the recall list and notifies webhooks). Also the translation of rows
into the gate's plain values, shared with the release paths.

Ownership (invariant 7): the patient comes from the path and must be the actor's
tenant's; a listed treatment or media id must belong to that patient, else 404 naming
the field and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keys.errors import KeyDestroyed
from keys.store import KeyStore
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.consent import gate
from vault.consent.models import ConsentRecord, Release
from vault.consent.responses import ConsentView, EvidenceInfo, ReleaseView, Withdrawal
from vault import idempotent
from vault.db import Database, new_id, utcnow
from vault.errors import Conflict, NotFound, ValidationFailed
from vault.media.models import Media
from vault.patients.service import PatientService
from vault.sealed import SealedBlobs, SealedRef
from vault.treatments.service import TreatmentService
from vault.webhooks.service import WebhookService

WITHDRAWN_EVENT = "consent.withdrawn"
RECALL_OPEN_EVENT = "release.recall_open"  # a recall not yet taken down, re-notified


# -- rows -> the gate's values ----------------------------------------------------------
def to_gate_event(r: ConsentRecord) -> gate.ConsentEvent:
    return gate.ConsentEvent(
        id=r.id,
        patient_id=r.patient_id,
        kind=r.kind,
        purposes=frozenset(r.purposes.split(",")),
        scope=r.scope,
        recorded_at=r.recorded_at,
        identifiable=bool(r.identifiable),
        treatment_id=r.treatment_id,
        media_ids=frozenset(json.loads(r.media_ids)),
        expires_at=r.expires_at,
    )


def facts_of(media: Media, *, review_required: bool = False, redaction_approved: bool = False) -> gate.MediaFacts:
    """The gate's facts about one media row; the release policy and the approval state
    come from :func:`vault.redaction.state.gate_facts`, which every release path uses."""
    return gate.MediaFacts(
        media_id=media.id,
        patient_id=media.patient_id,
        treatment_id=media.treatment_id,
        kind=media.kind,
        status=media.status,
        faces_detected=media.faces_detected,
        face_boxes=tuple(_box(box) for box in json.loads(media.faces_boxes)),
        faces_assumed=media.faces_assumed,
        face_review=media.face_review,
        review_required=review_required,
        redaction_approved=redaction_approved,

        faces_state=media.faces_state,
    )


async def load_events(session: AsyncSession, tenant_id: str, patient_ids: Iterable[str]) -> dict[str, list[gate.ConsentEvent]]:
    """Every consent event of these patients (of this tenant), for the gate."""
    ids = sorted(set(patient_ids))
    events: dict[str, list[gate.ConsentEvent]] = defaultdict(list)
    for start in range(0, len(ids), 500):
        rows = (
            await session.execute(
                select(ConsentRecord).where(ConsentRecord.tenant_id == tenant_id, ConsentRecord.patient_id.in_(ids[start:start + 500]))
            )
        ).scalars()
        for row in rows:
            events[row.patient_id].append(to_gate_event(row))
    return events


def _box(box: list[Any]) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    return x, y, w, h


async def release_view(keys: KeyStore, r: Release) -> ReleaseView:
    try:
        recipient = (await keys.open_field(r.tenant_id, r.patient_id, table="releases", column="recipient",
                                           row_id=r.id, sealed=r.recipient)).decode()
    except KeyDestroyed:
        recipient = None  # erased: the recall list still answers, without the personal field
    return ReleaseView(
        id=r.id,
        media_id=r.media_id,
        patient_id=r.patient_id,
        purpose=r.purpose,
        rendition=r.rendition,
        recipient=recipient,
        released_by=r.released_by,
        consent_id=r.consent_id,
        **({"approval_id": r.approval_id} if r.approval_id else {}),
        **({"handle": r.handle} if r.handle else {}),
        **({"pair_media_id": r.pair_media_id} if r.pair_media_id else {}),
        created_at=r.created_at.isoformat(),
        expires_at=r.expires_at.isoformat(),
        downloaded_at=r.downloaded_at.isoformat() if r.downloaded_at else None,
        recalled_at=r.recalled_at.isoformat() if r.recalled_at else None,
        taken_down_at=r.taken_down_at.isoformat() if r.taken_down_at else None,
        taken_down_by=r.taken_down_by,
    )


class _Replayed(Exception):
    def __init__(self, consent_id: str) -> None:
        self.consent_id = consent_id


class ConsentService:
    def __init__(self, db: Database, audit: AuditLog, keys: KeyStore, sealed: SealedBlobs, patients: PatientService,
                 webhooks: WebhookService) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.sealed = sealed
        self.patients = patients
        self.webhooks = webhooks

    # -- recording -----------------------------------------------------------------------
    async def record(
        self,
        actor: Actor,
        patient_id: str,
        *,
        purposes: list[str],
        identifiable: bool,
        treatment_id: str | None = None,
        media_ids: list[str] | None = None,
        expires_at: datetime | None = None,
        evidence: tuple[bytes, str] | None = None,
        notes: str | None = None,
        idempotency_key: str | None = None,
    ) -> ConsentView:
        """A new grant. ``evidence`` is (bytes, sniffed media type) of the signed form.
        A replayed ``Idempotency-Key`` answers with the first grant (its withdrawals since shown)."""
        if treatment_id is not None and media_ids:
            raise ValidationFailed("a consent covers one treatment or listed media, not both",
                                   details={"errors": [{"field": "media_ids", "problem": "with_treatment_id"}]})
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed(details={"errors": [{"field": "expires_at", "problem": "in_the_past"}]})
        key = await idempotent.claim(self.keys, actor, f"consent|{patient_id}", idempotency_key, {
            "purposes": sorted(set(purposes)), "identifiable": identifiable, "treatment_id": treatment_id,
            "media_ids": sorted(set(media_ids or [])), "expires_at": expires_at.isoformat() if expires_at else None,
            "evidence": hashlib.sha256(evidence[0]).hexdigest() if evidence else None, "notes": notes,
        })
        async with self.db.session() as session:
            await self.patients.load(session, actor, patient_id)  # 404/410 before storing any evidence
            first = await idempotent.replayed(session, key)
        if first is not None:
            return await self._replay(actor, patient_id, first)
        evidence_ref: SealedRef | None = None
        if evidence is not None:
            evidence_ref = await self.sealed.put_bytes(actor.tenant_id, patient_id, evidence[0])
        record = ConsentRecord(
            id=new_id(), tenant_id=actor.tenant_id, patient_id=patient_id, kind=gate.GRANT,
            purposes=",".join(sorted(set(purposes))), identifiable=identifiable,
            scope=gate.SCOPE_TREATMENT if treatment_id else (gate.SCOPE_MEDIA if media_ids else gate.SCOPE_PATIENT),
            treatment_id=treatment_id, media_ids=json.dumps(sorted(set(media_ids or []))), expires_at=expires_at,
            evidence_blob_id=evidence_ref.id if evidence_ref else None,
            evidence_mime=evidence[1] if evidence else None,
            evidence_size=evidence_ref.plain_size if evidence_ref else None,
            recorded_by=actor.token_id, recorded_at=now,
        )
        try:
            async with self.db.transaction() as session:
                patient = await self.patients.load(session, actor, patient_id, lock=True)
                if treatment_id is not None:
                    await TreatmentService.owned(session, tenant_id=actor.tenant_id, patient_id=patient.id, treatment_id=treatment_id)
                if media_ids:
                    await self._owned_media(session, actor.tenant_id, patient.id, set(media_ids))
                if (first := await idempotent.replayed(session, key)) is not None:  # a concurrent retry won
                    raise _Replayed(first)
                record.notes = await self._seal(record, "notes", notes)
                session.add(record)
                idempotent.remember(session, key, record.id)
                await session.flush()
                await self.audit.append(session, AuditEvent.of(actor, "consent.record", patient_id=patient_id, consent_id=record.id))
        except _Replayed as replay:
            if evidence_ref is not None:
                await self.sealed.destroy(evidence_ref)
            return await self._replay(actor, patient_id, replay.consent_id)
        except BaseException:
            if evidence_ref is not None:
                await self.sealed.destroy(evidence_ref)
            raise
        return await self._view(record, withdrawn=set())

    async def _replay(self, actor: Actor, patient_id: str, consent_id: str) -> ConsentView:
        async with self.db.session() as session:
            record = await session.get_one(ConsentRecord, consent_id)
            withdrawals = (await session.execute(select(ConsentRecord.purposes).where(
                ConsentRecord.tenant_id == actor.tenant_id, ConsentRecord.withdraws_id == consent_id))).scalars().all()
        await self.audit.record(AuditEvent.of(actor, "consent.record.replay", patient_id=patient_id, consent_id=consent_id))
        return await self._view(record, withdrawn={p for w in withdrawals for p in w.split(",")})

    @staticmethod
    async def _owned_media(session: AsyncSession, tenant_id: str, patient_id: str, media_ids: set[str]) -> None:
        found = set(
            (await session.execute(
                select(Media.id).where(Media.id.in_(sorted(media_ids)), Media.tenant_id == tenant_id, Media.patient_id == patient_id)
            )).scalars()
        )
        if found != media_ids:
            # Which ids failed is not said: it would confirm ids of other patients or tenants.
            raise NotFound("a listed media id does not belong to this patient", details={"field": "media_ids"})

    async def _seal(self, record: ConsentRecord, column: str, value: str | None) -> bytes | None:
        if value is None:
            return None
        return await self.keys.seal_field(record.tenant_id, record.patient_id, table="consent_events", column=column,
                                          row_id=record.id, value=value)

    async def _view(self, r: ConsentRecord, *, withdrawn: set[str]) -> ConsentView:
        notes = None
        if r.notes is not None:
            notes = (await self.keys.open_field(r.tenant_id, r.patient_id, table="consent_events", column="notes",
                                                row_id=r.id, sealed=r.notes)).decode()
        purposes = r.purposes.split(",")
        fields: dict[str, Any] = {}
        if r.kind == gate.GRANT:  # absent from a withdrawal's view
            fields["withdrawn_purposes"] = sorted(withdrawn & set(purposes))
        return ConsentView(
            id=r.id,
            patient_id=r.patient_id,
            kind=r.kind,
            purposes=purposes,
            identifiable=bool(r.identifiable) if r.kind == gate.GRANT else None,
            scope=r.scope,
            treatment_id=r.treatment_id,
            media_ids=json.loads(r.media_ids),
            expires_at=r.expires_at.isoformat() if r.expires_at else None,
            withdraws_id=r.withdraws_id,
            evidence=EvidenceInfo(mime=r.evidence_mime, size=r.evidence_size) if r.evidence_blob_id else None,
            notes=notes,
            recorded_by=r.recorded_by,
            recorded_at=r.recorded_at.isoformat(),
            **fields,
        )

    # -- reading -------------------------------------------------------------------------
    async def history(self, actor: Actor, patient_id: str) -> list[ConsentView]:
        async with self.db.session() as session:
            patient = await self.patients.load(session, actor, patient_id)
            rows = (
                await session.execute(
                    select(ConsentRecord)
                    .where(ConsentRecord.patient_id == patient.id, ConsentRecord.tenant_id == actor.tenant_id)
                    .order_by(ConsentRecord.recorded_at, ConsentRecord.id)
                )
            ).scalars().all()
        withdrawn: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            if r.withdraws_id:
                withdrawn[r.withdraws_id].update(r.purposes.split(","))
        views = [await self._view(r, withdrawn=withdrawn[r.id]) for r in rows]
        await self.audit.record(AuditEvent.of(actor, "consent.list", patient_id=patient_id, count=str(len(views))))
        return views

    async def evidence(self, actor: Actor, consent_id: str) -> tuple[bytes, str]:
        async with self.db.session() as session:
            record = await self._load(session, actor, consent_id)
        if record.evidence_blob_id is None:
            raise NotFound("this consent has no evidence")
        ref = SealedRef(id=record.evidence_blob_id, tenant_id=record.tenant_id, patient_id=record.patient_id,
                        plain_size=record.evidence_size or 0)
        data = await self.sealed.read(ref)
        await self.audit.record(AuditEvent.of(actor, "consent.evidence", patient_id=record.patient_id, consent_id=record.id))
        return data, record.evidence_mime or "application/octet-stream"

    async def _load(self, session: AsyncSession, actor: Actor, consent_id: str, *, lock_patient: bool = False) -> ConsentRecord:
        record = (
            await session.execute(select(ConsentRecord).where(ConsentRecord.id == consent_id, ConsentRecord.tenant_id == actor.tenant_id))
        ).scalar_one_or_none()
        if record is None:
            raise NotFound("no such consent")
        await self.patients.load(session, actor, record.patient_id, lock=lock_patient)  # erased -> 410
        return record

    # -- withdrawal ----------------------------------------------------------------------
    async def withdraw(self, actor: Actor, consent_id: str, *, purposes: list[str] | None = None,
                       notes: str | None = None) -> Withdrawal:
        """A withdrawal event for the grant's scope and (some of) its purposes. Returns the
        event and the recall list: every earlier release of the affected media for those
        purposes. Webhooks are enqueued in the same transaction."""
        now = utcnow()
        async with self.db.transaction() as session:
            grant = await self._load(session, actor, consent_id, lock_patient=True)
            if grant.kind != gate.GRANT:
                raise Conflict("only a grant can be withdrawn")
            granted = set(grant.purposes.split(","))
            if purposes and not set(purposes) <= granted:
                raise ValidationFailed(details={"errors": [{"field": "purposes", "problem": "not_in_consent"}]})
            earlier = (
                await session.execute(select(ConsentRecord.purposes).where(ConsentRecord.withdraws_id == grant.id))
            ).scalars().all()
            already = {p for joined in earlier for p in joined.split(",")}
            wanted = (set(purposes) if purposes else granted) - already
            if not wanted:
                raise Conflict("this consent is already withdrawn for those purposes")
            event = ConsentRecord(
                id=new_id(), tenant_id=grant.tenant_id, patient_id=grant.patient_id, kind=gate.WITHDRAWAL,
                purposes=",".join(sorted(wanted)), identifiable=False, scope=grant.scope, treatment_id=grant.treatment_id,
                media_ids=grant.media_ids, expires_at=None, withdraws_id=grant.id, recorded_by=actor.token_id, recorded_at=now,
            )
            event.notes = await self._seal(event, "notes", notes)
            session.add(event)
            await session.flush()
            recalled = await recall(session, grant.tenant_id, grant.patient_id, media=await affected_media(session, grant),
                                    purposes=wanted, event_id=event.id, now=now)
            await self.webhooks.notify(session, grant.tenant_id, WITHDRAWN_EVENT, {
                "patient_id": grant.patient_id, "consent_id": grant.id, "withdrawal_id": event.id,
                "purposes": sorted(wanted), "release_ids": [r.id for r in recalled],
                "media_ids": sorted({r.media_id for r in recalled}),
            })
            await self.audit.append(session, AuditEvent.of(actor, "consent.withdraw", patient_id=grant.patient_id,
                                                           consent_id=grant.id, withdrawal_id=event.id, recalled=str(len(recalled))))
        await self._shred_unused(recalled)
        return Withdrawal(
            withdrawal=await self._view(event, withdrawn=set()),
            recall=[await release_view(self.keys, r) for r in recalled],
        )

    async def renotify_open_recalls(self, *, after: timedelta, now: datetime | None = None, batch: int = 500) -> int:
        """Re-notify the webhooks of recalls still open (not taken down) ``after`` their
        recall, and again every ``after`` while they stay open (a periodic job): one
        ``release.recall_open`` event per tenant naming the releases (ids only). Returns
        how many releases were re-notified."""
        now = now or utcnow()
        cutoff = now - after
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    select(Release).where(Release.recalled_at <= cutoff, Release.taken_down_at.is_(None),
                                          or_(Release.recall_renotified_at.is_(None), Release.recall_renotified_at <= cutoff))
                    .order_by(Release.recalled_at, Release.id).limit(batch)
                )
            ).scalars().all()
            by_tenant: dict[str, list[Release]] = {}
            for r in rows:
                by_tenant.setdefault(r.tenant_id, []).append(r)
            for tenant_id, releases in by_tenant.items():
                await self.webhooks.notify(session, tenant_id, RECALL_OPEN_EVENT, {
                    "release_ids": [r.id for r in releases], "media_ids": sorted({r.media_id for r in releases}),
                    "patient_ids": sorted({r.patient_id for r in releases}),
                })
            if rows:
                await session.execute(update(Release).where(Release.id.in_([r.id for r in rows])).values(recall_renotified_at=now))
        return len(rows)

    async def _shred_unused(self, releases: list[Release]) -> None:
        """A recalled release's redacted rendition that was never downloaded is no longer needed."""
        for r in releases:
            if r.blob_id is not None and r.downloaded_at is None:
                await shred_rendition(self.db, self.sealed, r)


async def affected_media(session: AsyncSession, grant: ConsentRecord) -> list[str] | None:
    """The media a grant's scope reaches: a list of ids, or None for all the patient's."""
    if grant.scope == gate.SCOPE_PATIENT:
        return None
    if grant.scope == gate.SCOPE_TREATMENT:
        rows = await session.execute(select(Media.id).where(Media.patient_id == grant.patient_id, Media.treatment_id == grant.treatment_id))
        return list(rows.scalars())
    ids: list[str] = json.loads(grant.media_ids)
    return ids


async def recall(session: AsyncSession, tenant_id: str, patient_id: str, *, media: list[str] | None,
                 purposes: set[str] | None, event_id: str, now: datetime) -> list[Release]:
    """Mark and return every release of the patient made before ``now`` — of ``media``
    (None: all) and ``purposes`` (None: all). Erasure calls it with both None."""
    query = select(Release).where(Release.tenant_id == tenant_id, Release.patient_id == patient_id, Release.created_at <= now)
    if media is not None:
        wanted = sorted(media) or [""]
        # a composite is recalled when either of its photos is
        query = query.where(or_(Release.media_id.in_(wanted), Release.pair_media_id.in_(wanted)))
    if purposes is not None:
        query = query.where(Release.purpose.in_(sorted(purposes)))
    releases = list((await session.execute(query.order_by(Release.created_at, Release.id))).scalars())
    for r in releases:
        if r.recalled_at is None:
            # Each release its own instant (up to a second after the event): one withdrawal
            # must not stamp one telling timestamp on all of a person's releases, which would
            # link their de-identified releases to each other and to the identifiable ones.
            r.recalled_at, r.recall_event_id = now + timedelta(microseconds=secrets.randbelow(1_000_000)), event_id
    await session.flush()
    return releases


async def shred_rendition(db: Database, sealed: SealedBlobs, release: Release) -> None:
    """Shred a release's own rendition (key first), then forget it on the row."""
    if release.blob_id is None:
        return
    ref = SealedRef(id=release.blob_id, tenant_id=release.tenant_id, patient_id=release.patient_id, plain_size=release.blob_size or 0)
    await sealed.destroy(ref)
    async with db.transaction() as session:
        row = await session.get(Release, release.id, with_for_update=True)
        if row is not None and row.blob_id == ref.id:
            row.blob_id = None
    release.blob_id = None
