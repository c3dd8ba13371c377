"""Renewing a patient's DEK after a single-object shred or a rectification.

Object keys and personal fields are sealed under the patient DEK, and the DEK lives on
across KEK epochs (a rotation only rewraps it). So after one photo is shredded, a backup's
wrapped object key still opens with *today's* DEK; after a field is corrected, a backup's
old value does too. Destroying epochs alone cannot end that. The cure: mark the patient
(:meth:`request_dek_renewal`, done by :meth:`KeyStore.destroy_object` itself and by the
vault on a rectification), and at the next KEK rotation give them a new DEK — reseal
their fields and rewrap their live object keys under it, and replace the DEK row — so
the old DEK is left only in copies, wrapped under epochs that are then destroyed on
their schedule. :meth:`renewal_schedule` tells a receipt for one object when that is.

While a renewal runs the new DEK is *pending* (table ``pending_deks``): ``seal_field``
seals under it and ``open_field`` falls back to it, so a field written meanwhile is
never left under the old DEK by the vault's reseal pass.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from keys import aead
from keys.epochs import ErasureSchedule, RootEpochs
from keys.hierarchy import KEY_BYTES, PatientKey, now
from keys.models import dek_renewals, object_keys, patient_deks, pending_deks, tenant_keks
from keys.providers import LEGACY_VERSION

# The vault's reseal of one patient's sealed fields: open each (current or pending DEK),
# seal again (under the pending DEK), write back.
Reseal = Callable[[str, str], Awaitable[Any]]
OBJECT_DELETE, RECTIFICATION = "object_delete", "rectification"
AWAITING_ROTATION = ("the patient's key is renewed at the next KEK rotation; until then a copy of the key store "
                     "made before this deletion opens it with the live key, so no date can be promised yet")


class DekRenewals(RootEpochs):
    async def request_dek_renewal(self, tenant_id: str, patient_id: str, cause: str,
                                  *, conn: AsyncConnection | None = None) -> None:
        """Mark the patient's DEK for renewal at the next rotation (idempotent while pending)."""
        if conn is None:
            async with self._writer.begin() as own:
                await self._request(own, tenant_id, patient_id, cause)
        else:
            await self._request(conn, tenant_id, patient_id, cause)

    async def _request(self, conn: AsyncConnection, tenant_id: str, patient_id: str, cause: str) -> None:
        pending = await conn.scalar(sa.select(dek_renewals.c.renewal_id).where(
            dek_renewals.c.tenant_id == tenant_id, dek_renewals.c.patient_id == patient_id,
            dek_renewals.c.renewed_at.is_(None)).limit(1))
        if pending is None:
            await conn.execute(dek_renewals.insert().values(
                renewal_id=str(uuid.uuid4()), tenant_id=tenant_id, patient_id=patient_id, cause=cause,
                requested_at=now()))

    async def pending_renewals(self, tenant_id: str) -> list[str]:
        """Patients of the tenant waiting for a new DEK."""
        async with self._reader.connect() as conn:
            rows = (await conn.scalars(sa.select(dek_renewals.c.patient_id).distinct().where(
                dek_renewals.c.tenant_id == tenant_id, dek_renewals.c.renewed_at.is_(None))
                .order_by(dek_renewals.c.patient_id))).all()
        return [str(r) for r in rows]

    async def renew_pending(self, tenant_id: str, reseal: Reseal) -> int:
        """Renew every marked patient of the tenant; returns how many got a new DEK."""
        renewed = 0
        for patient_id in await self.pending_renewals(tenant_id):
            renewed += await self.renew_patient_key(tenant_id, patient_id, reseal)
        return renewed

    async def renew_patient_key(self, tenant_id: str, patient_id: str, reseal: Reseal) -> bool:
        """Give the patient a new DEK under the current KEK version: create it (pending),
        let ``reseal(tenant_id, patient_id)`` move every sealed field onto it, then in one
        transaction rewrap the live object keys under it and replace the DEK row (an
        UPDATE of the old row, never an upsert: an erased patient stays erased). False
        when the patient has no DEK (erased meanwhile); resumes an interrupted renewal."""
        if await self._dek_row(tenant_id, patient_id) is None:
            await self._drop_pending(tenant_id, patient_id)
            return False
        await self._ensure_pending(tenant_id, patient_id)
        await reseal(tenant_id, patient_id)
        target = await self._current_version(tenant_id)
        await self._kek(tenant_id, target)  # warm it outside the lock
        swapped = False
        async with self._writer.begin() as conn:
            await self._lock_tenant(conn, tenant_id)
            mine = (patient_deks.c.tenant_id == tenant_id) & (patient_deks.c.patient_id == patient_id)
            old = (await conn.execute(sa.select(patient_deks).where(mine))).first()
            pending = (await conn.execute(sa.select(pending_deks).where(
                pending_deks.c.tenant_id == tenant_id, pending_deks.c.patient_id == patient_id))).first()
            if old is not None and pending is not None:
                await self._swap(conn, tenant_id, patient_id, old, pending, target)
                swapped = True
        # The old DEK and the object keys it wrapped are gone from the rows: every node's
        # cache drops them too (a node holding the old DEK would fail on the rewrapped keys).
        await self._cache.destroyed(("patient", tenant_id, patient_id))
        if not swapped:
            await self._drop_pending(tenant_id, patient_id)
            return False
        await self._harden(patient_deks, object_keys, pending_deks)
        return True

    async def _swap(self, conn: AsyncConnection, tenant_id: str, patient_id: str, old: Any, pending: Any,
                    target: int) -> None:
        old_key = aead.open_sealed(await self._kek(tenant_id, old.kek_version, conn=conn), old.wrapped,
                                   aead.aad(aead.LABEL_DEK, tenant_id, patient_id, old.dek_id, old.kek_version))
        new_key = aead.open_sealed(await self._kek(tenant_id, pending.kek_version, conn=conn), pending.wrapped,
                                   aead.aad(aead.LABEL_DEK, tenant_id, patient_id, pending.dek_id, pending.kek_version))
        target_kek = await self._kek(tenant_id, target, conn=conn)
        rows = (await conn.execute(sa.select(object_keys).where(
            object_keys.c.tenant_id == tenant_id, object_keys.c.patient_id == patient_id,
            object_keys.c.dek_id == old.dek_id))).all()
        for r in rows:
            raw = aead.open_sealed(old_key, r.wrapped, aead.aad(
                aead.LABEL_OBJECT_KEY, tenant_id, patient_id, r.object_id, old.dek_id, r.key_id))
            wrapped = aead.seal(new_key, raw, aead.aad(
                aead.LABEL_OBJECT_KEY, tenant_id, patient_id, r.object_id, pending.dek_id, r.key_id))
            await conn.execute(object_keys.update().where(object_keys.c.key_id == r.key_id,
                                                          object_keys.c.dek_id == old.dek_id)
                               .values(dek_id=pending.dek_id, wrapped=wrapped))
        await conn.execute(patient_deks.update().where(
            patient_deks.c.tenant_id == tenant_id, patient_deks.c.patient_id == patient_id,
            patient_deks.c.dek_id == old.dek_id,
        ).values(dek_id=pending.dek_id, kek_version=target, wrapped=aead.seal(
            target_kek, new_key, aead.aad(aead.LABEL_DEK, tenant_id, patient_id, pending.dek_id, target))))
        where = (pending_deks.c.tenant_id == tenant_id) & (pending_deks.c.patient_id == patient_id)
        await self._overwrite(conn, pending_deks, where)
        await conn.execute(pending_deks.delete().where(where))
        # Every epoch that can have wrapped the old DEK: versions up to the one it was
        # under (a rotation only moves forward) not destroyed yet. Copies holding it die
        # with them.
        epochs = (await conn.scalars(sa.select(tenant_keks.c.root_version).where(
            tenant_keks.c.tenant_id == tenant_id, tenant_keks.c.version <= old.kek_version,
            tenant_keks.c.state != "destroyed"))).all()
        await conn.execute(dek_renewals.update().where(
            dek_renewals.c.tenant_id == tenant_id, dek_renewals.c.patient_id == patient_id,
            dek_renewals.c.renewed_at.is_(None),
        ).values(renewed_at=now(), old_dek_id=old.dek_id,
                 old_epochs=json.dumps(sorted({v or LEGACY_VERSION for v in epochs}))))

    async def _ensure_pending(self, tenant_id: str, patient_id: str) -> None:
        version = await self._current_version(tenant_id)
        kek = await self._kek(tenant_id, version)
        async with self._writer.begin() as conn:
            if await self._lock_tenant(conn, tenant_id) != version:
                version = await self._current_version_in(conn, tenant_id)
                kek = await self._kek(tenant_id, version, conn=conn)
            exists = await conn.scalar(sa.select(pending_deks.c.dek_id).where(
                pending_deks.c.tenant_id == tenant_id, pending_deks.c.patient_id == patient_id))
            if exists is not None:
                return
            dek_id = str(uuid.uuid4())
            await conn.execute(pending_deks.insert().values(
                tenant_id=tenant_id, patient_id=patient_id, dek_id=dek_id, kek_version=version, created_at=now(),
                wrapped=aead.seal(kek, secrets.token_bytes(KEY_BYTES),
                                  aead.aad(aead.LABEL_DEK, tenant_id, patient_id, dek_id, version))))

    async def _current_version_in(self, conn: AsyncConnection, tenant_id: str) -> int:
        version = await self._lock_tenant(conn, tenant_id)
        assert version is not None
        return version

    async def _drop_pending(self, tenant_id: str, patient_id: str) -> None:
        where = (pending_deks.c.tenant_id == tenant_id) & (pending_deks.c.patient_id == patient_id)
        async with self._writer.begin() as conn:
            await self._overwrite(conn, pending_deks, where)
            gone = (await conn.execute(pending_deks.delete().where(where))).rowcount
            # Nothing left to renew: an erased patient's marks are settled by the erasure.
            await conn.execute(dek_renewals.update().where(
                dek_renewals.c.tenant_id == tenant_id, dek_renewals.c.patient_id == patient_id,
                dek_renewals.c.renewed_at.is_(None)).values(renewed_at=now()))
        if gone:
            await self._harden(pending_deks)

    async def _pending_key(self, tenant_id: str, patient_id: str) -> PatientKey | None:
        async with self._reader.connect() as conn:
            row = (await conn.execute(sa.select(pending_deks.c.dek_id, pending_deks.c.kek_version, pending_deks.c.wrapped)
                                      .where(pending_deks.c.tenant_id == tenant_id,
                                             pending_deks.c.patient_id == patient_id))).first()
        if row is None:
            return None
        return await self._unwrap_dek(tenant_id, patient_id, row.dek_id, row.kek_version, row.wrapped)

    async def renewal_schedule(self, tenant_id: str, patient_id: str, *, since: datetime) -> ErasureSchedule:
        """What a receipt for one object of the patient shredded at ``since`` may promise:
        nothing while the patient's DEK is not yet renewed (``awaiting_renewal``); then the
        destruction of every epoch that held the old DEK."""
        async with self._reader.connect() as conn:
            row = (await conn.execute(sa.select(dek_renewals).where(
                dek_renewals.c.tenant_id == tenant_id, dek_renewals.c.patient_id == patient_id,
                sa.or_(dek_renewals.c.renewed_at.is_(None), dek_renewals.c.renewed_at >= since),
            ).order_by(dek_renewals.c.requested_at).limit(1))).first()
        if row is None or row.renewed_at is None or row.old_epochs is None:
            return ErasureSchedule(self._root.name, (), None, False, None, awaiting_renewal=True)
        return await self._schedule_of(json.loads(row.old_epochs))

