"""Every personal column sealed under a patient DEK, and resealing them onto a new DEK.

A patient's DEK is renewed at the next KEK rotation after one of their objects was shredded
or a sealed field was corrected (keys/renewal.py): a copy made before still holds the old
wrapped object key or the old value, which the live DEK would open. The key store rewraps
the object keys itself; the fields live here, in the metadata database, so the key store
calls :func:`reseal_patient` while the new DEK is pending: each value is opened (old or
new DEK) and sealed again (new DEK). A test keeps :data:`SEALED_COLUMNS` equal to the
models' sealed columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from vault.consent.models import ConsentRecord, Release
from vault.db import Database
from vault.lifecycle.models import LegalHold
from vault.media.models import Media
from vault.patients.models import Patient
from vault.treatments.models import Treatment


@dataclass(frozen=True)
class SealedColumns:
    model: Any
    table: str  # the name bound into each value's AAD
    columns: tuple[str, ...]
    row_id: str  # the attribute bound as row id
    patient: str  # the attribute naming the patient


SEALED_COLUMNS: tuple[SealedColumns, ...] = (
    SealedColumns(Patient, "patients", ("external_ref", "display_name", "date_of_birth", "notes"), "id", "id"),
    SealedColumns(Media, "media", ("capture",), "id", "patient_id"),
    SealedColumns(Treatment, "treatments", ("name", "area", "details"), "id", "patient_id"),
    SealedColumns(ConsentRecord, "consent_events", ("notes",), "id", "patient_id"),
    SealedColumns(Release, "releases", ("recipient",), "id", "patient_id"),
    SealedColumns(LegalHold, "legal_holds", ("reason",), "patient_id", "patient_id"),
)


class Resealer:
    """``reseal(tenant_id, patient_id)`` as the key store's renewal calls it."""

    def __init__(self, db: Database, keys: Any) -> None:
        self.db = db
        self.keys = keys

    async def __call__(self, tenant_id: str, patient_id: str) -> int:
        return await reseal_patient(self.db, self.keys, tenant_id, patient_id)


async def reseal_patient(db: Database, keys: Any, tenant_id: str, patient_id: str) -> int:
    """Open and seal again every sealed value of the patient (under the pending DEK);
    returns how many. One write transaction per table, rows locked while resealed."""
    count = 0
    for spec in SEALED_COLUMNS:
        model = spec.model
        async with db.transaction() as session:
            rows = (await session.execute(
                select(model).where(getattr(model, "tenant_id") == tenant_id, getattr(model, spec.patient) == patient_id)
                .with_for_update()
            )).scalars().all()
            for row in rows:
                for column in spec.columns:
                    sealed = getattr(row, column)
                    if sealed is None:
                        continue
                    where = dict(table=spec.table, column=column, row_id=getattr(row, spec.row_id))
                    plain = await keys.open_field(tenant_id, patient_id, sealed=sealed, **where)
                    setattr(row, column, await keys.seal_field(tenant_id, patient_id, value=plain, **where))
                    count += 1
    return count
