"""Re-indexing patients' ``external_ref`` under the current epoch's blind-index key.

Blind-index keys rotate with the KEK epochs (docs/keys.md, "Blind indexes"): after a
rotation every live patient's ``ref_index`` is recomputed under the new epoch's key, so
that when the old epoch is destroyed no live key can recompute an index it made — an old
backup's index of an erased patient's MRN can then no longer be confirmed by guessing.
Lookups match every live epoch's index meanwhile (``KeyStore.blind_indexes``).
"""

from __future__ import annotations

from sqlalchemy import select, update

from vault.db import Database, rowcount
from vault.patients.models import ERASED, Patient
from vault.patients.service import REF_INDEX, normalise_ref

_BATCH = 200


async def reindex_patients(db: Database, keys, tenant_id: str) -> int:
    """Recompute every live patient's ``ref_index`` of the tenant under the current epoch;
    returns how many changed. Idempotent; pages by id; a patient erased meanwhile keeps its
    cleared index (the UPDATE requires the row still to be live)."""
    changed, after = 0, ""
    while True:
        async with db.session() as session:
            rows = (await session.execute(
                select(Patient.id, Patient.ref_index, Patient.external_ref)
                .where(Patient.tenant_id == tenant_id, Patient.status != ERASED, Patient.external_ref.is_not(None),
                       Patient.id > after)
                .order_by(Patient.id).limit(_BATCH)
            )).all()
        if not rows:
            return changed
        after = rows[-1].id
        updates = []
        for row in rows:
            ref = (await keys.open_field(tenant_id, row.id, table="patients", column="external_ref", row_id=row.id,
                                         sealed=row.external_ref)).decode()
            index = await keys.blind_index(tenant_id, REF_INDEX, normalise_ref(ref))
            if index != row.ref_index:
                updates.append((row.id, row.ref_index, index))
        if updates:
            async with db.transaction() as session:
                for patient_id, old, new in updates:
                    result = await session.execute(
                        update(Patient).where(Patient.id == patient_id, Patient.tenant_id == tenant_id,
                                              Patient.status != ERASED, Patient.ref_index == old)
                        .values(ref_index=new).execution_options(synchronize_session=False))
                    changed += rowcount(result)
