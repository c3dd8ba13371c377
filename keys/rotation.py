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
from keys.hierarchy import KEY_BYTES, KeyHierarchy, aware, kek_context, now
from keys.models import patient_deks, tenant_keks, tenants

Progress = Callable[[int, int], Any]
_REWRAP_BATCH = 200


@dataclass(frozen=True, slots=True)
class KekVersion:
    version: int
    state: str  # active | retired | destroyed
    created_at: datetime
    destroyed_at: datetime | None
    dek_count: int


class KekRotation(KeyHierarchy):
    async def kek_versions(self, tenant_id: str) -> list[KekVersion]:
        counts = (
            sa.select(patient_deks.c.kek_version, sa.func.count().label("n"))
            .where(patient_deks.c.tenant_id == tenant_id)
            .group_by(patient_deks.c.kek_version)
            .subquery()
        )
        query = (
            sa.select(tenant_keks, sa.func.coalesce(counts.c.n, 0).label("dek_count"))
            .outerjoin(counts, counts.c.kek_version == tenant_keks.c.version)
            .where(tenant_keks.c.tenant_id == tenant_id)
            .order_by(tenant_keks.c.version)
        )
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise KeyNotFound("tenant has no key hierarchy")
        return [
            KekVersion(r.version, r.state, aware(r.created_at), aware(r.destroyed_at), int(r.dek_count))  # type: ignore[arg-type]
            for r in rows
        ]

    async def rotate_kek(self, tenant_id: str, progress: Progress | None = None) -> int:
        """Create a new KEK version, rewrap every DEK under it, and return the new version."""
        for _attempt in range(5):
            current = await self._current_version(tenant_id)
            version = current + 1
            kek = secrets.token_bytes(KEY_BYTES)
            # Wrapped before the lock is taken: a KMS round trip should not hold it.
            wrapped = await self._root.wrap(kek, kek_context(tenant_id, version))
            async with self._writer.begin() as conn:
                if await self._lock_tenant(conn, tenant_id) != current:
                    continue  # another node rotated meanwhile; go again above theirs
                await conn.execute(
                    tenant_keks.update()
                    .where(tenant_keks.c.tenant_id == tenant_id, tenant_keks.c.state == "active")
                    .values(state="retired")
                )
                await conn.execute(
                    tenant_keks.insert().values(
                        tenant_id=tenant_id,
                        version=version,
                        wrapped=wrapped,
                        state="active",
                        created_at=now(),
                    )
                )
                await conn.execute(
                    tenants.update()
                    .where(tenants.c.tenant_id == tenant_id)
                    .values(current_kek_version=version)
                )
            self._cache.put(("kek", tenant_id, version), kek)
            await self.rewrap(tenant_id, progress=progress)
            return version
        raise KeysError("KEK rotation kept losing races with other rotations")

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

    async def destroy_kek_version(self, tenant_id: str, version: int) -> None:
        """Shred an old KEK version; refused while it is current or any DEK still uses it."""
        where = (tenant_keks.c.tenant_id == tenant_id) & (tenant_keks.c.version == version)
        async with self._writer.begin() as conn:
            current = await self._lock_tenant(conn, tenant_id)
            if current is None:
                raise KeyNotFound("tenant has no key hierarchy")
            if version == current:
                raise KeyInUse("cannot destroy the current KEK version; rotate first")
            state = await conn.scalar(sa.select(tenant_keks.c.state).where(where))
            if state is None:
                raise KeyNotFound("no such KEK version")
            if state == "destroyed":
                return
            in_use = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(patient_deks)
                .where(patient_deks.c.tenant_id == tenant_id, patient_deks.c.kek_version == version)
            )
            if in_use:
                raise KeyInUse("KEK version still wraps patient keys; rewrap first")
            await self._overwrite(conn, tenant_keks, where)
            await conn.execute(
                tenant_keks.update().where(where).values(wrapped=None, state="destroyed", destroyed_at=now())
            )
        self._cache.evict(("kek", tenant_id, version))
        await self._harden(tenant_keks)
