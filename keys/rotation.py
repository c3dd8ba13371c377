"""Tenant KEK versions: rotation, rewrapping and destruction (KEK epochs).

Rotation only rewraps DEK rows; DEKs, object keys and blobs never change. Once every
DEK is rewrapped, an old version can be destroyed, and from then on a backup or WAL
archive that still holds a DEK wrapped under it cannot be unwrapped.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from keys import aead
from keys.errors import KeyInUse, KeyNotFound, KeysError
from keys.epochs import TENANT_KEK
from keys.hierarchy import KEY_BYTES, aware, epoch_index_context, kek_context, now
from keys.models import patient_deks, pending_deks, root_versions, tenant_keks, tenants
from keys.renewal import DekRenewals, Reseal

Progress = Callable[[int, int], Any]
_REWRAP_BATCH = 200


@dataclass(frozen=True, slots=True)
class KekVersion:
    version: int
    state: str  # active | retired | destroyed
    created_at: datetime
    destroyed_at: datetime | None
    dek_count: int
    root_version: str | None = None  # None: the legacy pre-epoch root key
    destroy_after: datetime | None = None  # when its epoch is due for destruction


class KekRotation(DekRenewals):
    async def kek_versions(self, tenant_id: str) -> list[KekVersion]:
        counts = (
            sa.select(patient_deks.c.kek_version, sa.func.count().label("n"))
            .where(patient_deks.c.tenant_id == tenant_id)
            .group_by(patient_deks.c.kek_version)
            .subquery()
        )
        query = (
            sa.select(tenant_keks, sa.func.coalesce(counts.c.n, 0).label("dek_count"),
                      root_versions.c.destroy_after)
            .outerjoin(counts, counts.c.kek_version == tenant_keks.c.version)
            .outerjoin(root_versions, root_versions.c.version_id == tenant_keks.c.root_version)
            .where(tenant_keks.c.tenant_id == tenant_id)
            .order_by(tenant_keks.c.version)
        )
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise KeyNotFound("tenant has no key hierarchy")
        return [
            KekVersion(r.version, r.state, aware(r.created_at), aware(r.destroyed_at), int(r.dek_count),
                       r.root_version, aware(r.destroy_after))
            for r in rows
        ]

    async def rotate_kek(self, tenant_id: str, progress: Progress | None = None, *, reseal: Reseal | None = None) -> int:
        """Create a new KEK version, rewrap every DEK under it, and return the new version.

        With ``reseal`` (the vault's pass over a patient's sealed fields), every patient
        marked for DEK renewal first gets a new DEK under the new version (keys/renewal.py):
        before the rewrap, so the old DEK is never wrapped under the new epoch."""
        for _attempt in range(5):
            current = await self._current_version(tenant_id)
            version = current + 1
            kek = secrets.token_bytes(KEY_BYTES)
            # A new epoch: its own root-key version. Created and wrapped before the lock
            # is taken: provider round trips should not hold it.
            epoch = await self._create_root_version(TENANT_KEK, tenant_id, f"kek-{version}")
            wrapped = await self._root.wrap(epoch["version_id"], kek, kek_context(tenant_id, version))
            # The epoch's own blind-index key, under the same root version: dies with it.
            index_wrapped = await self._root.wrap(epoch["version_id"], secrets.token_bytes(KEY_BYTES),
                                                  epoch_index_context(tenant_id, version))
            async with self._writer.begin() as conn:
                if await self._lock_tenant(conn, tenant_id) != current:
                    lost = True
                else:
                    lost = False
                    await conn.execute(root_versions.insert().values(**epoch))
                    await self._install_version(conn, tenant_id, version, wrapped, epoch, index_wrapped)
            if lost:
                await self._discard_root_version(epoch["version_id"])
                continue  # another node rotated meanwhile; go again above theirs
            self._cache.put(("kek", tenant_id, version), kek)
            if reseal is not None:
                await self.renew_pending(tenant_id, reseal)
            await self.rewrap(tenant_id, progress=progress)
            return version
        raise KeysError("KEK rotation kept losing races with other rotations")

    async def _install_version(self, conn: Any, tenant_id: str, version: int, wrapped: bytes, epoch: dict[str, Any],
                               index_wrapped: bytes) -> None:
        await conn.execute(
            tenant_keks.update()
            .where(tenant_keks.c.tenant_id == tenant_id, tenant_keks.c.state == "active")
            .values(state="retired")
        )
        await conn.execute(
            tenant_keks.insert().values(
                tenant_id=tenant_id, version=version, wrapped=wrapped, state="active",
                created_at=epoch["created_at"], root_version=epoch["version_id"], index_wrapped=index_wrapped,
            )
        )
        await conn.execute(
            tenants.update().where(tenants.c.tenant_id == tenant_id).values(current_kek_version=version)
        )

    async def rewrap(self, tenant_id: str, *, progress: Progress | None = None) -> int:
        """Rewrap every DEK still under an older KEK version; resumes an interrupted rotation.

        Returns how many rows were rewrapped (rows erased meanwhile are skipped).
        """
        target = await self._current_version(tenant_id)
        target_kek = await self._kek(tenant_id, target)
        older = (patient_deks.c.tenant_id == tenant_id) & (patient_deks.c.kek_version < target)
        async with self._reader.connect() as conn:
            total = int(
                await conn.scalar(sa.select(sa.func.count()).select_from(patient_deks).where(older)) or 0
            )
        done = rewrapped = 0
        if progress is not None:
            progress(0, total)
        while True:
            async with self._reader.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(patient_deks)
                        .where(older)
                        .order_by(patient_deks.c.patient_id)
                        .limit(_REWRAP_BATCH)
                    )
                ).all()
            if not rows:
                return rewrapped
            updates = []
            for r in rows:
                old_kek = await self._kek(tenant_id, r.kek_version)
                dek = aead.open_sealed(
                    old_kek,
                    r.wrapped,
                    aead.aad(aead.LABEL_DEK, tenant_id, r.patient_id, r.dek_id, r.kek_version),
                )
                new = aead.seal(
                    target_kek, dek, aead.aad(aead.LABEL_DEK, tenant_id, r.patient_id, r.dek_id, target)
                )
                updates.append((r, new))
            async with self._writer.begin() as conn:
                for r, new in updates:
                    # Never an upsert: a row erased since we read it stays erased.
                    result = await conn.execute(
                        patient_deks.update()
                        .where(
                            patient_deks.c.tenant_id == tenant_id,
                            patient_deks.c.patient_id == r.patient_id,
                            patient_deks.c.dek_id == r.dek_id,
                            patient_deks.c.kek_version == r.kek_version,
                        )
                        .values(wrapped=new, kek_version=target)
                    )
                    rewrapped += result.rowcount
            done += len(rows)
            if progress is not None:
                progress(min(done, total), max(total, done))

    async def destroy_kek_version(self, tenant_id: str, version: int) -> datetime | None:
        """Shred an old KEK version and its root-key version (its epoch) in the provider;
        refused while it is current or any DEK still uses it. Returns when the epoch is
        irrecoverable everywhere (KMS: the end of the pending-deletion window), or None
        for a legacy version (the shared pre-epoch key goes later, see upgrade_legacy)."""
        where = (tenant_keks.c.tenant_id == tenant_id) & (tenant_keks.c.version == version)
        async with self._writer.begin() as conn:
            current = await self._lock_tenant(conn, tenant_id)
            if current is None:
                raise KeyNotFound("tenant has no key hierarchy")
            if version == current:
                raise KeyInUse("cannot destroy the current KEK version; rotate first")
            row = (await conn.execute(sa.select(tenant_keks.c.state, tenant_keks.c.root_version).where(where))).first()
            if row is None:
                raise KeyNotFound("no such KEK version")
            if row.state == "destroyed":
                # Idempotent; also finishes a destruction interrupted before the provider's.
                return await self._finish_epoch(row.root_version)
            in_use = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(patient_deks)
                .where(patient_deks.c.tenant_id == tenant_id, patient_deks.c.kek_version == version)
            ) or await conn.scalar(
                sa.select(sa.func.count())
                .select_from(pending_deks)
                .where(pending_deks.c.tenant_id == tenant_id, pending_deks.c.kek_version == version)
            )
            if in_use:
                raise KeyInUse("KEK version still wraps patient keys; rewrap first")
            await self._overwrite(conn, tenant_keks, where, ("wrapped", "index_wrapped"))
            await conn.execute(
                tenant_keks.update().where(where).values(wrapped=None, index_wrapped=None, state="destroyed",
                                                         destroyed_at=now())
            )
        await self._cache.destroyed(("kek", tenant_id, str(version)))
        await self._harden(tenant_keks)
        # The row first, then the provider: a crash in between leaves a version that
        # wraps nothing live, which finish_root_destructions (and a retry) destroys.
        return await self._finish_epoch(row.root_version)

    async def _finish_epoch(self, root_version: str | None) -> datetime | None:
        if root_version is None:
            return None
        (epoch,) = await self.root_versions(ids=[root_version])
        if epoch.irrecoverable_at is not None:
            return epoch.irrecoverable_at
        return await self._destroy_root_version(root_version)
