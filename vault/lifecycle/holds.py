"""Legal hold and restriction of processing.

A legal hold blocks erasure of the patient and deletion of any of their media, by
request or by retention sweep, until it is lifted. Its reason is sealed under the
patient DEK and never leaves the service (not in responses, logs or audit entries).

Restriction (GDPR art. 18) sets the patient's status to ``restricted``: the consent
gate then denies every release and the releasable listing skips the patient, while
storage, clinical reads and the patient's own subject-access export go on.

:meth:`HoldService.state` is the one read of the reason: the staff console shows it on
the patient page (``no-store``) to the roles that may place and lift holds. The API's
responses still never carry it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, utcnow
from vault.errors import Conflict
from vault.lifecycle.models import PENDING, ErasureRequest, LegalHold
from vault.lifecycle.reasons import open_hold_reason, seal_hold_reason
from vault.lifecycle.responses import LegalHoldOut, RestrictionOut
from vault.patients.models import ACTIVE, RESTRICTED
from vault.patients.service import PatientService


@dataclass(frozen=True)
class HoldState:
    """A patient's legal hold and restriction as they stand. ``placed_*`` and ``reason``
    describe the last hold placed (kept after it is lifted); ``*_by`` are audit actor ids."""

    patient_id: str
    legal_hold: bool
    reason: str | None
    placed_by: str | None
    placed_at: datetime | None
    lifted_by: str | None
    lifted_at: datetime | None
    restricted: bool


class HoldService:
    def __init__(self, *, db: Database, audit: AuditLog, keys, patients: PatientService) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.patients = patients

    async def place_hold(self, actor: Actor, patient_id: str, *, reason: str) -> LegalHoldOut:
        async with self.db.transaction() as session:
            patient = await self.patients.load(session, actor, patient_id, lock=True)
            pending = (await session.execute(
                select(ErasureRequest.id).where(ErasureRequest.patient_id == patient.id, ErasureRequest.state == PENDING)
            )).first()
            if pending is not None:
                raise Conflict("an erasure of this patient is already under way", details={"reason": "erasure_in_progress"})
            sealed = await seal_hold_reason(self.keys, patient.tenant_id, patient.id, reason)
            hold = await session.get(LegalHold, patient.id, with_for_update=True)
            now = utcnow()
            if hold is None:
                hold = LegalHold(patient_id=patient.id, tenant_id=patient.tenant_id)
                session.add(hold)
            hold.reason, hold.placed_by, hold.placed_at, hold.lifted_by, hold.lifted_at = sealed, actor.token_id, now, None, None
            await session.flush()
            await self.audit.append(session, AuditEvent.of(actor, "patient.legal_hold.place", patient_id=patient.id))
            return _hold_view(patient.id, hold)

    async def state(self, actor: Actor, patient_id: str) -> HoldState:
        """The hold (with its reason opened under the patient DEK) and the restriction."""
        async with self.db.session() as session:
            patient = await self.patients.load(session, actor, patient_id)
            hold = await session.get(LegalHold, patient.id)
        reason = None
        if hold is not None and hold.reason is not None:
            reason = await open_hold_reason(self.keys, patient.tenant_id, patient.id, hold.reason)
        return HoldState(
            patient_id=patient.id,
            legal_hold=hold is not None and hold.lifted_at is None,
            reason=reason,
            placed_by=hold.placed_by if hold else None,
            placed_at=hold.placed_at if hold else None,
            lifted_by=hold.lifted_by if hold else None,
            lifted_at=hold.lifted_at if hold else None,
            restricted=patient.status == RESTRICTED,
        )

    async def lift_hold(self, actor: Actor, patient_id: str) -> LegalHoldOut:
        async with self.db.transaction() as session:
            patient = await self.patients.load(session, actor, patient_id, lock=True)
            hold = await session.get(LegalHold, patient.id, with_for_update=True)
            outcome = "not_held"
            if hold is not None and hold.lifted_at is None:
                hold.lifted_by, hold.lifted_at, outcome = actor.token_id, utcnow(), "ok"
            await self.audit.append(session, AuditEvent.of(actor, "patient.legal_hold.lift", outcome=outcome,
                                                           patient_id=patient.id))
            return _hold_view(patient.id, hold)

    async def restrict(self, actor: Actor, patient_id: str, *, restricted: bool) -> RestrictionOut:
        async with self.db.transaction() as session:
            patient = await self.patients.load(session, actor, patient_id, lock=True)
            wanted = RESTRICTED if restricted else ACTIVE
            outcome = "ok" if patient.status != wanted else "unchanged"
            # updated_at is left alone: it is the "last contact" retention clock, and a
            # DPO's restriction is not contact with the patient.
            patient.status = wanted
            action = "patient.restrict" if restricted else "patient.unrestrict"
            await self.audit.append(session, AuditEvent.of(actor, action, outcome=outcome, patient_id=patient.id))
            return RestrictionOut(patient_id=patient.id, status=patient.status)


def _hold_view(patient_id: str, hold: LegalHold | None) -> LegalHoldOut:
    active = hold is not None and hold.lifted_at is None
    return LegalHoldOut(
        patient_id=patient_id,
        legal_hold=active,
        placed_at=hold.placed_at.isoformat() if hold is not None else None,
        placed_by=hold.placed_by if hold is not None else None,
        lifted_at=hold.lifted_at.isoformat() if hold is not None and hold.lifted_at else None,
    )
