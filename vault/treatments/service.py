from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id
from vault.errors import Conflict, NotFound
from vault.patients.service import PatientService
from vault.treatments.models import Treatment, TreatmentType

SEALED = ("name", "area", "details")


@dataclass(frozen=True)
class TreatmentView:
    id: str
    patient_id: str
    name: str
    area: str | None
    details: str | None
    performed_on: date
    type_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "patient_id": self.patient_id,
            "name": self.name,
            "area": self.area,
            "details": self.details,
            "performed_on": self.performed_on.isoformat(),
            "type_id": self.type_id,
        }


@dataclass(frozen=True)
class TypeView:
    id: str
    name: str


class TreatmentService:
    def __init__(self, db: Database, audit: AuditLog, keys, patients: PatientService) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.patients = patients

    async def _seal(self, t: Treatment, column: str, value: str | None) -> bytes | None:
        if value is None:
            return None
        return await self.keys.seal_field(t.tenant_id, t.patient_id, table="treatments", column=column, row_id=t.id, value=value)

    async def view(self, t: Treatment) -> TreatmentView:
        values: dict[str, Any] = {}
        for column in SEALED:
            sealed = getattr(t, column)
            values[column] = None if sealed is None else (
                await self.keys.open_field(t.tenant_id, t.patient_id, table="treatments", column=column, row_id=t.id, sealed=sealed)
            ).decode()
        return TreatmentView(id=t.id, patient_id=t.patient_id, performed_on=t.performed_on, type_id=t.type_id, **values)

    async def create(self, actor: Actor, patient_id: str, *, name: str, performed_on: date, area: str | None, details: str | None,
                     type_id: str | None = None) -> TreatmentView:
        async with self.db.transaction() as session:
            patient = await self.patients.load(session, actor, patient_id, lock=True)
            if type_id is not None:
                await _type(session, actor.tenant_id, type_id)
            t = Treatment(id=new_id(), tenant_id=patient.tenant_id, patient_id=patient.id, performed_on=performed_on,
                          created_by=actor.token_id, type_id=type_id)
            t.name = await self.keys.seal_field(t.tenant_id, t.patient_id, table="treatments", column="name", row_id=t.id,
                                                value=name)
            t.area = await self._seal(t, "area", area)
            t.details = await self._seal(t, "details", details)
            session.add(t)
            await session.flush()
            await self.audit.append(session, AuditEvent.of(actor, "treatment.create", patient_id=patient.id, treatment_id=t.id))
        return await self.view(t)

    async def list(self, actor: Actor, patient_id: str) -> list[TreatmentView]:
        async with self.db.session() as session:
            patient = await self.patients.load(session, actor, patient_id)
            rows = (
                await session.execute(select(Treatment).where(Treatment.patient_id == patient.id).order_by(Treatment.performed_on, Treatment.id))
            ).scalars().all()
        views = [await self.view(t) for t in rows]
        await self.audit.record(AuditEvent.of(actor, "treatment.list", patient_id=patient_id))
        return views

    @staticmethod
    async def owned(session: AsyncSession, *, tenant_id: str, patient_id: str, treatment_id: str) -> Treatment:
        """The treatment, if it belongs to this patient of this tenant (invariant 7)."""
        t = (
            await session.execute(
                select(Treatment).where(Treatment.id == treatment_id, Treatment.patient_id == patient_id, Treatment.tenant_id == tenant_id)
            )
        ).scalar_one_or_none()
        if t is None:
            raise NotFound("no such treatment for this patient", details={"field": "treatment_id"})
        return t

    # -- the tenant's treatment-type vocabulary -------------------------------------------
    async def types(self, actor: Actor) -> tuple[TypeView, ...]:
        """The vocabulary, by name. Names no one (no audit of patient data to write)."""
        async with self.db.session() as session:
            rows = (await session.execute(select(TreatmentType).where(TreatmentType.tenant_id == actor.tenant_id)
                                          .order_by(TreatmentType.name))).scalars().all()
        return tuple(TypeView(id=r.id, name=r.name) for r in rows)

    async def set_types(self, actor: Actor, names: Sequence[str]) -> tuple[TypeView, ...]:
        """Replace the vocabulary by ``names``: a name kept keeps its id (treatments keep
        pointing at it), a new one gets an id, a dropped one goes unless a treatment uses it
        (409 ``type_in_use``: nothing changes)."""
        wanted = {n.casefold(): n for n in names}
        async with self.db.transaction() as session:
            rows = (await session.execute(select(TreatmentType).where(TreatmentType.tenant_id == actor.tenant_id))).scalars().all()
            have = {r.name.casefold(): r for r in rows}
            dropped = [r.id for key, r in have.items() if key not in wanted]
            if dropped:
                used = (await session.execute(select(Treatment.type_id).where(Treatment.type_id.in_(dropped)).limit(1))).first()
                if used is not None:
                    raise Conflict("a treatment uses this type", details={"reason": "type_in_use",
                                                                          "name": next(r.name for r in rows if r.id == used[0])})
                await session.execute(delete(TreatmentType).where(TreatmentType.id.in_(dropped)))
            for key, name in wanted.items():
                if key in have:
                    have[key].name = name
                else:
                    session.add(TreatmentType(id=new_id(), tenant_id=actor.tenant_id, name=name))
            await self.audit.append(session, AuditEvent.of(actor, "treatment_types.set", count=str(len(wanted))))
        return await self.types(actor)


async def _type(session: AsyncSession, tenant_id: str, type_id: str) -> TreatmentType:
    row = await session.get(TreatmentType, type_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound("no such treatment type", details={"field": "type_id"})
    return row
