"""Patients: create, find, read and rectify, with personal fields sealed under the
patient's own key and ``external_ref`` found through a keyed blind index."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vault.db.tenancy import owned
from vault.actor import Actor
from vault.audit.service import AuditEvent, AuditLog
from vault.db import Database, new_id, utcnow
from vault.errors import Conflict, PatientErased
from vault.patients.models import ERASED, Patient

PERSONAL = ("external_ref", "display_name", "date_of_birth", "notes")
REF_INDEX = "patient.external_ref"


def normalise_ref(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip())


@dataclass(frozen=True)
class PatientView:
    id: str
    status: str
    external_ref: str | None
    display_name: str | None
    date_of_birth: date | None
    notes: str | None
    created_at: datetime
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "external_ref": self.external_ref,
            "display_name": self.display_name,
            "date_of_birth": self.date_of_birth.isoformat() if self.date_of_birth else None,
            "notes": self.notes,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class PatientService:
    def __init__(self, db: Database, audit: AuditLog, keys) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys

    # -- loading with tenant checks -------------------------------------------------
    async def load(self, session: AsyncSession, actor: Actor, patient_id: str, *, lock: bool = False, allow_erased: bool = False) -> Patient:
        """The patient of the actor's tenant, or NotFound (another tenant's too)."""
        patient = await owned(session, Patient, patient_id, actor.tenant_id, lock=lock, what="patient")
        if patient.status == ERASED and not allow_erased:
            raise PatientErased()
        return patient

    # -- sealing ---------------------------------------------------------------------
    async def _seal(self, patient: Patient, column: str, value: str | None, *, rectification: bool = False) -> bytes | None:
        if value is None:
            if rectification:  # cleared: the old value may still sit in a copy
                await self.keys.request_dek_renewal(patient.tenant_id, patient.id, "rectification")
            return None
        return await self.keys.seal_field(
            patient.tenant_id, patient.id, table="patients", column=column, row_id=patient.id, value=value.encode(),
            rectification=rectification,
        )

    async def _open(self, patient: Patient, column: str) -> str | None:
        sealed = getattr(patient, column)
        if sealed is None:
            return None
        plain = await self.keys.open_field(
            patient.tenant_id, patient.id, table="patients", column=column, row_id=patient.id, sealed=sealed
        )
        return plain.decode()

    async def view(self, patient: Patient) -> PatientView:
        if patient.status == ERASED:
            raise PatientErased()
        values = {column: await self._open(patient, column) for column in PERSONAL}
        dob = values.pop("date_of_birth")
        return PatientView(
            id=patient.id,
            status=patient.status,
            date_of_birth=date.fromisoformat(dob) if dob else None,
            created_at=patient.created_at,
            updated_at=patient.updated_at,
            **values,
        )

    async def _ref_index(self, tenant_id: str, external_ref: str) -> str:
        # Under the current epoch's index key: rows are re-indexed at each rotation
        # (vault/patients/index.py), and lookups match every live epoch meanwhile.
        return await self.keys.blind_index(tenant_id, REF_INDEX, normalise_ref(external_ref))

    async def _ref_indexes(self, tenant_id: str, external_ref: str) -> list[str]:
        return await self.keys.blind_indexes(tenant_id, REF_INDEX, normalise_ref(external_ref))

    # -- use cases ----------------------------------------------------------------------
    async def create(
        self,
        actor: Actor,
        *,
        external_ref: str,
        display_name: str | None = None,
        date_of_birth: date | None = None,
        notes: str | None = None,
    ) -> PatientView:
        patient = Patient(id=new_id(), tenant_id=actor.tenant_id)
        # The key exists before any ciphertext that needs it; if the row is never
        # committed the orphan key protects nothing and is destroyed below.
        await self.keys.create_patient_key(actor.tenant_id, patient.id)
        try:
            patient.ref_index = await self._ref_index(actor.tenant_id, external_ref)
            patient.external_ref = await self._seal(patient, "external_ref", normalise_ref(external_ref))
            patient.display_name = await self._seal(patient, "display_name", display_name)
            patient.date_of_birth = await self._seal(patient, "date_of_birth", date_of_birth.isoformat() if date_of_birth else None)
            patient.notes = await self._seal(patient, "notes", notes)
            async with self.db.transaction() as session:
                await self._ensure_ref_free(session, actor.tenant_id, await self._ref_indexes(actor.tenant_id, external_ref))
                session.add(patient)
                await session.flush()
                await self.audit.append(session, AuditEvent.of(actor, "patient.create", patient_id=patient.id))
        except BaseException:
            await self.keys.destroy_patient(actor.tenant_id, patient.id)
            raise
        return await self.view(patient)

    async def _ensure_ref_free(self, session: AsyncSession, tenant_id: str, ref_indexes: list[str], *, other_than: str | None = None) -> None:
        existing = (
            await session.execute(select(Patient.id).where(Patient.tenant_id == tenant_id, Patient.ref_index.in_(ref_indexes)))
        ).scalars().all()
        if any(found != other_than for found in existing):
            raise Conflict("a patient with that external_ref exists", details={"field": "external_ref"})

    async def get(self, actor: Actor, patient_id: str) -> PatientView:
        async with self.db.session() as session:
            patient = await self.load(session, actor, patient_id)
        view = await self.view(patient)
        await self.audit.record(AuditEvent.of(actor, "patient.read", patient_id=patient.id))
        return view

    async def find(self, actor: Actor, external_ref: str) -> list[PatientView]:
        ref_indexes = await self._ref_indexes(actor.tenant_id, external_ref)
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(Patient).where(Patient.tenant_id == actor.tenant_id, Patient.ref_index.in_(ref_indexes), Patient.status != ERASED)
                )
            ).scalars().all()
        views = [await self.view(p) for p in rows]
        await self.audit.record(AuditEvent.of(actor, "patient.find", patient_id=views[0].id if views else None, outcome="ok" if views else "none"))
        return views

    async def page(self, actor: Actor, *, cursor: str | None, limit: int) -> tuple[list[PatientView], str | None]:
        query = select(Patient).where(Patient.tenant_id == actor.tenant_id, Patient.status != ERASED)
        if cursor:
            query = query.where(Patient.id > cursor)
        async with self.db.session() as session:
            rows = (await session.execute(query.order_by(Patient.id).limit(limit + 1))).scalars().all()
        more = len(rows) > limit
        rows = rows[:limit]
        views = [await self.view(p) for p in rows]
        await self.audit.record(AuditEvent.of(actor, "patient.list", count=str(len(views))))
        return views, (rows[-1].id if more else None)

    async def update(self, actor: Actor, patient_id: str, changes: dict[str, Any]) -> PatientView:
        async with self.db.transaction() as session:
            patient = await self.load(session, actor, patient_id, lock=True)
            for column, value in changes.items():
                if column == "external_ref":
                    value = normalise_ref(value)
                    ref_index = await self._ref_index(actor.tenant_id, value)
                    await self._ensure_ref_free(session, actor.tenant_id, await self._ref_indexes(actor.tenant_id, value),
                                                other_than=patient.id)
                    patient.ref_index = ref_index
                elif column == "date_of_birth" and value is not None:
                    value = value.isoformat()
                # A correction: the old value may sit in a copy; the DEK is renewed at the next rotation.
                setattr(patient, column, await self._seal(patient, column, value, rectification=True))
            patient.updated_at = utcnow()
            try:
                await session.flush()
            except IntegrityError:
                raise Conflict("a patient with that external_ref exists", details={"field": "external_ref"}) from None
            await self.audit.append(
                session, AuditEvent.of(actor, "patient.rectify", patient_id=patient.id, fields=",".join(sorted(changes)))
            )
        return await self.view(patient)
