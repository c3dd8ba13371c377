"""Root-key versions (epochs): creating them, destroying them with their KEK version,
what a receipt may promise, and moving a store made before epochs onto them.

Naming: ``<instance id>.<tenant id | "service">.<label>.<random>`` — never shared
across tenants or vault instances, never reused (the random part also keeps two nodes
racing to rotate from asking the provider for the same name).

Three kinds of version:
- ``tenant-kek``: wraps exactly one tenant KEK version; destroyed with it, which makes
  every copy of that epoch unreadable. ``destroy_after`` = creation + backup window.
- ``service``: long-lived, never destroyed; wraps the service signing key and the
  tenants' blind-index keys (what must verify or look up across epochs).
- ``legacy``: the single root key of a store from before epochs; scheduled for
  destruction by :meth:`upgrade_legacy` once nothing new is wrapped under it.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from keys.errors import KeyDestroyed, KeysError
from keys.hierarchy import KeyHierarchy, aware, now
from keys.models import keystore_info, root_versions, service_keys, tenant_keks, tenants
from keys.providers import LEGACY_VERSION

log = logging.getLogger("keys.store")

TENANT_KEK, SERVICE, LEGACY = "tenant-kek", "service", "legacy"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class RootVersion:
    version_id: str
    provider: str
    kind: str
    tenant_id: str | None
    created_at: datetime
    destroy_after: datetime | None
    destroyed_at: datetime | None
    irrecoverable_at: datetime | None


@dataclass(frozen=True, slots=True)
class ErasureSchedule:
    """What an erasure completed now may promise about copies of the key store."""

    provider: str
    epochs: tuple[RootVersion, ...]  # every live root version that wrapped the tenant's KEKs
    irrecoverable_after: datetime | None  # None: no date can be promised (legacy not yet scheduled)
    legacy: bool  # some of it still sits under the pre-epoch root key
    cancellable_until: datetime | None  # KMS: deletion can be cancelled until then
    # One object's shred: the patient's DEK is not renewed yet (keys/renewal.py), so no
    # epoch's destruction ends a copy's access to it.
    awaiting_renewal: bool = False


class RootEpochs(KeyHierarchy):
    @property
    def deletion_delay(self) -> timedelta:
        """How long after destroy_version a version is really gone (KMS pending window)."""
        return getattr(self._root, "deletion_delay", timedelta(0))

    async def instance_id(self) -> str:
        if getattr(self, "_instance", None) is None:
            async with self._reader.connect() as conn:
                value = await conn.scalar(sa.select(keystore_info.c.value).where(keystore_info.c.name == "instance_id"))
            if value is None:
                raise KeysError("the key store has no instance id: run its migrations")
            self._instance: str = value
        return self._instance

    async def _create_root_version(self, kind: str, tenant_id: str | None, label: str) -> dict[str, Any]:
        """Ask the provider for a fresh version; returns the ``root_versions`` row to insert
        in the caller's transaction (with the rows it wraps)."""
        owner = _UNSAFE.sub("-", tenant_id)[:64] if tenant_id else "service"
        version_id = f"{await self.instance_id()}.{owner}.{label}.{secrets.token_hex(4)}"
        await self._root.create_version(version_id)
        # Whole seconds: receipts print whole seconds, and must never promise a date
        # earlier than the recorded one.
        created = now().replace(microsecond=0)
        return {
            "version_id": version_id, "provider": self._root.name, "kind": kind, "tenant_id": tenant_id,
            "created_at": created, "destroy_after": created + self.backup_window if kind == TENANT_KEK else None,
        }

    async def _discard_root_version(self, version_id: str) -> None:
        """A version created for a transaction that lost a race: nothing was wrapped for keeps."""
        try:
            await self._root.destroy_version(version_id)
        except KeysError as exc:
            log.warning("could not destroy an unused root key version: %s", type(exc).__name__)

    async def _service_version(self) -> str:
        """The long-lived version (created on first use; the oldest wins a race)."""
        query = (sa.select(root_versions.c.version_id)
                 .where(root_versions.c.kind == SERVICE, root_versions.c.destroyed_at.is_(None))
                 .order_by(root_versions.c.created_at, root_versions.c.version_id).limit(1))
        async with self._reader.connect() as conn:
            found = await conn.scalar(query)
        if found is None:
            row = await self._create_root_version(SERVICE, None, "root")
            async with self._writer.begin() as conn:
                await conn.execute(root_versions.insert().values(**row))
            async with self._reader.connect() as conn:
                found = await conn.scalar(query)
        return str(found)

    # -- destruction ---------------------------------------------------------------------
    async def _destroy_root_version(self, version_id: str) -> datetime:
        """Destroy in the provider first, then record (a crash in between is finished by
        :meth:`finish_root_destructions`: providers' destroy is idempotent)."""
        irrecoverable = await self._root.destroy_version(version_id)
        async with self._writer.begin() as conn:
            await conn.execute(root_versions.update().where(root_versions.c.version_id == version_id)
                               .values(destroyed_at=now(), irrecoverable_at=irrecoverable))
        await self._cache.destroyed(("all",))  # a destroyed epoch's unwrapped keys must not linger, on any node
        return irrecoverable

    async def finish_root_destructions(self, *, at: datetime | None = None) -> list[str]:
        """Destroy every root version nothing live refers to: a tenant KEK version's after
        its KEK was destroyed (crash recovery), the legacy one once past its date."""
        at = at or now()
        referenced = sa.union(
            sa.select(tenant_keks.c.root_version.label("v")).where(tenant_keks.c.state != "destroyed"),
            sa.select(tenants.c.index_root_version.label("v")).where(tenants.c.index_key_wrapped.is_not(None)),
            sa.select(service_keys.c.root_version.label("v")),
        ).subquery()
        async with self._reader.connect() as conn:
            rows = (await conn.execute(sa.select(root_versions).where(root_versions.c.destroyed_at.is_(None),
                                                                      root_versions.c.kind != SERVICE))).all()
            live = {r.v for r in (await conn.execute(sa.select(referenced.c.v))).all()}
            legacy_rows = await conn.scalar(
                sa.select(sa.func.count()).select_from(tenant_keks)
                .where(tenant_keks.c.root_version.is_(None), tenant_keks.c.state != "destroyed"))
        legacy_live = None in live or bool(legacy_rows)
        done = []
        for r in rows:
            if r.kind == TENANT_KEK and r.version_id in live:
                continue
            if r.kind == LEGACY and (legacy_live or r.destroy_after is None or aware(r.destroy_after) > at):
                continue
            await self._destroy_root_version(r.version_id)
            done.append(r.version_id)
        return done

    # -- what receipts may promise -------------------------------------------------------
    async def root_versions(self, *, tenant_id: str | None = None, ids: list[str] | None = None) -> list[RootVersion]:
        query = sa.select(root_versions).order_by(root_versions.c.created_at, root_versions.c.version_id)
        if tenant_id is not None:
            query = query.where(root_versions.c.tenant_id == tenant_id)
        if ids is not None:
            query = query.where(root_versions.c.version_id.in_(ids))
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [RootVersion(r.version_id, r.provider, r.kind, r.tenant_id, aware(r.created_at), aware(r.destroy_after),
                            aware(r.destroyed_at), aware(r.irrecoverable_at)) for r in rows]

    async def erasure_schedule(self, tenant_id: str) -> ErasureSchedule:
        """For a patient of ``tenant_id`` whose DEK was just destroyed: every epoch that
        can have wrapped it (the tenant's KEK versions not yet destroyed), and the latest
        date by which all of them are irrecoverable."""
        async with self._reader.connect() as conn:
            kek_roots = [r.root_version for r in (await conn.execute(
                sa.select(tenant_keks.c.root_version).where(tenant_keks.c.tenant_id == tenant_id,
                                                            tenant_keks.c.state != "destroyed"))).all()]
        return await self._schedule_of(sorted({v or LEGACY_VERSION for v in kek_roots}))

    async def _schedule_of(self, ids: list[str]) -> ErasureSchedule:
        """The latest date by which every one of these root versions is irrecoverable."""
        epochs = tuple(await self.root_versions(ids=ids))
        legacy = LEGACY_VERSION in ids
        delay = self.deletion_delay
        dates = [v.irrecoverable_at or (v.destroy_after + delay if v.destroy_after else None) for v in epochs]
        irrecoverable = cancellable = None
        if dates and None not in dates and len(epochs) == len(ids):
            irrecoverable = max(d for d in dates if d is not None)
            cancellable = irrecoverable if delay else None
        return ErasureSchedule(self._root.name, epochs, irrecoverable, legacy, cancellable)

    # -- upgrading a store made before epochs ------------------------------------------------
    async def upgrade_legacy(self, *, at: datetime | None = None) -> bool:
        """Move a pre-epoch store onto epochs: rewrap the long-lived keys under a new
        service version, rotate every tenant into a new epoch, and schedule the legacy key
        for destruction one backup window from now. Idempotent; True when it did work."""
        async with self._reader.connect() as conn:
            legacy = (await conn.execute(sa.select(root_versions).where(
                root_versions.c.version_id == LEGACY_VERSION))).first()
        if legacy is None or legacy.destroy_after is not None:
            return False
        service = await self._service_version()
        await self._rewrap_long_lived(service)
        async with self._reader.connect() as conn:
            stale = (await conn.scalars(sa.select(tenant_keks.c.tenant_id).where(
                tenant_keks.c.root_version.is_(None), tenant_keks.c.state == "active"))).all()
        for tenant_id in stale:
            await self.rotate_kek(tenant_id)  # type: ignore[attr-defined]  # KekRotation
        # Backups made before now hold the legacy key's rows: they age out by then.
        async with self._writer.begin() as conn:
            await conn.execute(root_versions.update().where(root_versions.c.version_id == LEGACY_VERSION)
                               .values(provider=self._root.name, destroy_after=(at or now()) + self.backup_window))
        return True

    async def _rewrap_long_lived(self, service: str) -> None:
        from keys.hierarchy import index_key_context

        async with self._reader.connect() as conn:
            index_rows = (await conn.execute(sa.select(tenants.c.tenant_id, tenants.c.index_key_wrapped)
                                             .where(tenants.c.index_root_version.is_(None),
                                                    tenants.c.index_key_wrapped.is_not(None)))).all()
            signing_rows = (await conn.execute(sa.select(service_keys.c.name, service_keys.c.wrapped)
                                               .where(service_keys.c.root_version.is_(None)))).all()
        for r in index_rows:
            context = index_key_context(r.tenant_id)
            plain = await self._root_unwrap(None, r.index_key_wrapped, context)
            wrapped = await self._root.wrap(service, plain, context)
            async with self._writer.begin() as conn:  # an UPDATE of the old row, never an upsert
                await conn.execute(tenants.update().where(tenants.c.tenant_id == r.tenant_id,
                                                          tenants.c.index_root_version.is_(None))
                                   .values(index_key_wrapped=wrapped, index_root_version=service))
        for r in signing_rows:
            context = signing_context(r.name)
            plain = await self._root_unwrap(None, r.wrapped, context)
            wrapped = await self._root.wrap(service, plain, context)
            async with self._writer.begin() as conn:
                await conn.execute(service_keys.update().where(service_keys.c.name == r.name,
                                                               service_keys.c.root_version.is_(None))
                                   .values(wrapped=wrapped, root_version=service))


def signing_context(name: str) -> dict[str, str]:
    return {"purpose": "service-signing", "name": name}


__all__ = ["ErasureSchedule", "KeyDestroyed", "RootEpochs", "RootVersion", "signing_context"]
