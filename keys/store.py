"""The key store: tenant KEKs -> patient DEKs -> object keys, and their shredding.

Every read of a patient or object key reads its row (one indexed SELECT) even when the
unwrapped key is cached: a destroyed key must stop working at once on every node.
Writers that depend on another row take a lock first (``FOR UPDATE`` on PostgreSQL,
``BEGIN IMMEDIATE`` on SQLite), and rewrapping is an ``UPDATE ... WHERE kek_version =
old`` of an existing row, so a rotation racing an erasure can never bring a key back.

    store = await KeyStore.open(url, open_root_key(root_url, production=...))
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
import uuid
from collections.abc import Iterable
from typing import Any
from datetime import timedelta

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from keys import aead, db
from keys.cache import KeyCache
from keys.errors import IntegrityError, KeyDestroyed, KeyExists, KeyInUse, KeyNotFound, KeysError
from keys.epochs import TENANT_KEK, ErasureSchedule, RootVersion, signing_context
from keys.hierarchy import (
    KEY_BYTES, ObjectKey, PatientKey, epoch_index_context, kek_context, now, purpose_key_context,
)
from keys.models import (
    SCHEMA, erased_patients, object_keys, patient_deks, pending_deks, root_versions, service_keys, tenant_keks,
    tenant_purpose_keys, tenants,
)
from keys.renewal import OBJECT_DELETE, RECTIFICATION
from keys.providers import RootKeyProvider
from keys.rotation import KekRotation, KekVersion, Progress

__all__ = ["ErasureSchedule", "KekVersion", "KeyStore", "holds_keys", "ObjectKey", "PatientKey", "Progress",
           "RootVersion", "normalise_for_index"]

_ID_CHUNK = 500
# Built once: the hot path (every media read) skips statement construction and its cache key.
_OBJECT_KEY_ROW = sa.select(
    object_keys.c.key_id,
    object_keys.c.wrapped,
    patient_deks.c.dek_id,
    patient_deks.c.kek_version,
    patient_deks.c.wrapped.label("dek_wrapped"),
).where(
    object_keys.c.tenant_id == sa.bindparam("t"),
    object_keys.c.patient_id == sa.bindparam("p"),
    object_keys.c.object_id == sa.bindparam("o"),
    patient_deks.c.tenant_id == object_keys.c.tenant_id,
    patient_deks.c.patient_id == object_keys.c.patient_id,
    patient_deks.c.dek_id == object_keys.c.dek_id,
)
#: the same rows for several objects of one tenant (``uq_object_keys_object``), read together
#: by concurrent media reads on PostgreSQL (:class:`keys.db.PointBatches`)
_OBJECT_KEY_ROWS = sa.select(
    object_keys.c.patient_id,
    object_keys.c.object_id,
    *_OBJECT_KEY_ROW.selected_columns,
).where(
    object_keys.c.tenant_id == sa.bindparam("t"),
    object_keys.c.object_id == sa.any_(sa.bindparam("os", type_=sa.ARRAY(sa.String))),
    patient_deks.c.tenant_id == object_keys.c.tenant_id,
    patient_deks.c.patient_id == object_keys.c.patient_id,
    patient_deks.c.dek_id == object_keys.c.dek_id,
)
_SIGNING_KEY = "ed25519"
_SIGNING_CONTEXT = signing_context(_SIGNING_KEY)


class KeyStore(KekRotation):
    def __init__(
        self, engine: AsyncEngine, root: RootKeyProvider, *, cache: KeyCache, schema: str,
        backup_window: timedelta = timedelta(days=35),
    ) -> None:
        super().__init__(engine, root, cache=cache, schema=schema, backup_window=backup_window)
        self._signing: Ed25519PrivateKey | None = None
        self._key_rows = db.PointBatches(self._points, _OBJECT_KEY_ROWS, group=("t",), many="os", column="object_id")

    @classmethod
    async def open(
        cls,
        url: str,
        root_provider: RootKeyProvider,
        *,
        schema: str = SCHEMA,
        cache_ttl: float = 5.0,
        cache_size: int = 4096,
        backup_window_days: int = 35,
    ) -> KeyStore:
        """Open a migrated key store (:func:`keys.migrate.upgrade`). The caller owns the provider.

        ``backup_window_days`` fixes the ``destroy_after`` of each root-key version created
        from now on (existing versions keep theirs)."""
        engine = db.create_engine(url, schema=schema)
        return cls(engine, root_provider, cache=KeyCache(ttl=cache_ttl, size=cache_size), schema=schema,
                   backup_window=timedelta(days=backup_window_days))

    async def close(self) -> None:
        self._cache.clear()
        self._points.close()
        await self._engine.dispose()

    async def ensure_tenant(self, tenant_id: str) -> int:
        """Create the tenant's KEK v1 and blind-index key if absent; return the current KEK version."""
        try:
            return await self._current_version(tenant_id)
        except KeyNotFound:
            pass
        kek, index_key = secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES)
        # KEK v1 gets its own epoch, and so does its blind-index key (it dies with it).
        epoch = await self._create_root_version(TENANT_KEK, tenant_id, "kek-1")
        wrapped_kek = await self._root.wrap(epoch["version_id"], kek, kek_context(tenant_id, 1))
        wrapped_index = await self._root.wrap(epoch["version_id"], index_key, epoch_index_context(tenant_id, 1))
        created = epoch["created_at"]
        try:
            async with self._writer.begin() as conn:
                await conn.execute(root_versions.insert().values(**epoch))
                await conn.execute(
                    tenants.insert().values(
                        tenant_id=tenant_id,
                        current_kek_version=1,
                        index_key_wrapped=None,  # no long-lived index key (only legacy tenants have one)
                        created_at=created,
                        index_root_version=None,
                    )
                )
                await conn.execute(
                    tenant_keks.insert().values(
                        tenant_id=tenant_id,
                        version=1,
                        wrapped=wrapped_kek,
                        state="active",
                        created_at=created,
                        root_version=epoch["version_id"],
                        index_wrapped=wrapped_index,
                    )
                )
        except sa_exc.IntegrityError:
            # Another node created it first; theirs wins, and our epoch wraps nothing.
            await self._discard_root_version(epoch["version_id"])
        return await self._current_version(tenant_id)

    # -- patient keys ----------------------------------------------------------------

    async def create_patient_key(self, tenant_id: str, patient_id: str) -> str:
        """Create the patient's DEK if absent and return its id; refused once the patient is erased."""
        existing = await self._dek_row(tenant_id, patient_id)
        if existing is not None:
            existing_id: str = existing.dek_id
            return existing_id
        await self._kek(tenant_id, await self._current_version(tenant_id))  # warm it outside the lock
        async with self._writer.begin() as conn:
            version = await self._lock_tenant(conn, tenant_id)
            if version is None:
                raise KeyNotFound("tenant has no key hierarchy; call ensure_tenant first")
            erased = await conn.scalar(
                sa.select(erased_patients.c.erased_at).where(
                    erased_patients.c.tenant_id == tenant_id, erased_patients.c.patient_id == patient_id
                )
            )
            if erased is not None:
                raise KeyDestroyed("patient was erased; no key is ever created for them again")
            dek_id = await conn.scalar(
                sa.select(patient_deks.c.dek_id).where(
                    patient_deks.c.tenant_id == tenant_id, patient_deks.c.patient_id == patient_id
                )
            )
            if dek_id is not None:
                return str(dek_id)
            kek = await self._kek(tenant_id, version, conn=conn)
            dek_id = str(uuid.uuid4())
            associated = aead.aad(aead.LABEL_DEK, tenant_id, patient_id, dek_id, version)
            await conn.execute(
                patient_deks.insert().values(
                    tenant_id=tenant_id,
                    patient_id=patient_id,
                    dek_id=dek_id,
                    kek_version=version,
                    wrapped=aead.seal(kek, secrets.token_bytes(KEY_BYTES), associated),
                    created_at=now(),
                )
            )
        return dek_id

    async def patient_key(self, tenant_id: str, patient_id: str) -> PatientKey:
        row = await self._dek_row(tenant_id, patient_id)
        if row is None:
            self.evict(tenant_id, patient_id)
            raise KeyDestroyed("patient key does not exist")
        return await self._unwrap_dek(tenant_id, patient_id, row.dek_id, row.kek_version, row.wrapped)

    async def destroy_patient(self, tenant_id: str, patient_id: str) -> list[str]:
        """Shred the patient's DEK; return the destroyed key ids (``[dek_id]``).

        Idempotent: a second call returns ``[]``. O(1) in the number of objects: the DEK
        is the shred — every object key is wrapped by it and dies with it (reads check
        the DEK row, so none unwraps afterwards). The dead object-key rows, ciphertext
        under a key that no longer exists, are removed later in bulk by
        :meth:`purge_object_keys`, off the erasure's critical path.
        """
        mine = (patient_deks.c.tenant_id == tenant_id) & (patient_deks.c.patient_id == patient_id)
        async with self._writer.begin() as conn:
            await self._lock_tenant(conn, tenant_id)  # serialises with create_patient_key
            dek_id = await conn.scalar(sa.select(patient_deks.c.dek_id).where(mine))
            erased = await conn.scalar(
                sa.select(erased_patients.c.erased_at).where(
                    erased_patients.c.tenant_id == tenant_id, erased_patients.c.patient_id == patient_id
                )
            )
            if erased is None:
                await conn.execute(
                    erased_patients.insert().values(
                        tenant_id=tenant_id, patient_id=patient_id, erased_at=now()
                    )
                )
            if dek_id is not None:
                await self._overwrite(conn, patient_deks, mine)
                await conn.execute(patient_deks.delete().where(mine))
            # A renewal's next DEK dies with the patient too.
            next_dek = (pending_deks.c.tenant_id == tenant_id) & (pending_deks.c.patient_id == patient_id)
            await self._overwrite(conn, pending_deks, next_dek)
            await conn.execute(pending_deks.delete().where(next_dek))
        await self._cache.destroyed(("patient", tenant_id, patient_id))  # here and on every other node
        if dek_id is None:
            return []
        await self._harden(patient_deks)
        return [str(dek_id)]

    async def purge_object_keys(self, tenant_id: str, patient_id: str) -> list[str]:
        """Delete, in bulk, the object-key rows of a patient whose DEK is destroyed (they
        can no longer be unwrapped); returns their ids. Refused while the DEK exists."""
        mine = (patient_deks.c.tenant_id == tenant_id) & (patient_deks.c.patient_id == patient_id)
        objects = (object_keys.c.tenant_id == tenant_id) & (object_keys.c.patient_id == patient_id)
        async with self._writer.begin() as conn:
            if await conn.scalar(sa.select(patient_deks.c.dek_id).where(mine)) is not None:
                raise KeyInUse("the patient's key still exists: destroy it first")
            object_ids = (await conn.scalars(sa.select(object_keys.c.key_id).where(objects))).all()
            if object_ids:
                await self._overwrite(conn, object_keys, objects)
                await conn.execute(object_keys.delete().where(objects))
        if object_ids:
            await self._harden(object_keys)
        return sorted(str(i) for i in object_ids)

    # -- object keys -----------------------------------------------------------------

    async def new_object_key(self, tenant_id: str, patient_id: str, object_id: str) -> ObjectKey:
        """A fresh random key for one blob, stored wrapped by the patient DEK."""
        (key,) = await self.new_object_keys(tenant_id, patient_id, [object_id])
        return key

    async def new_object_keys(self, tenant_id: str, patient_id: str, object_ids: list[str]) -> list[ObjectKey]:
        """A fresh random key for each blob (one per object id, in order), stored wrapped by
        the patient DEK in one transaction: a photo's original and thumbnails cost one
        commit, not three. All or none: KeyExists when any id already has a key."""
        if not object_ids:
            return []
        patient = await self.patient_key(tenant_id, patient_id)
        keys = [ObjectKey(secrets.token_bytes(KEY_BYTES), key_id=str(uuid.uuid4())) for _ in object_ids]
        created = now()
        rows = [
            {
                "key_id": key.key_id, "tenant_id": tenant_id, "patient_id": patient_id, "object_id": object_id,
                "dek_id": patient.dek_id, "created_at": created,
                "wrapped": aead.seal(patient.key, bytes(key), aead.aad(
                    aead.LABEL_OBJECT_KEY, tenant_id, patient_id, object_id, patient.dek_id, key.key_id)),
            }
            for object_id, key in zip(object_ids, keys, strict=True)
        ]
        try:
            async with self._writer.begin() as conn:
                # The DEK row must still be there, under a lock: an erasure that commits
                # between our read and this insert must win.
                current = await conn.scalar(
                    sa.select(patient_deks.c.dek_id)
                    .where(patient_deks.c.tenant_id == tenant_id, patient_deks.c.patient_id == patient_id)
                    .with_for_update()
                )
                if current != patient.dek_id:
                    raise KeyDestroyed("patient key does not exist")
                await conn.execute(object_keys.insert(), rows)
        except sa_exc.IntegrityError:
            raise KeyExists("an object key already exists for this object id") from None
        for object_id, key in zip(object_ids, keys, strict=True):
            self._cache.put(("obj", tenant_id, patient_id, object_id, key.key_id), key)
        return keys

    async def object_key(self, tenant_id: str, patient_id: str, object_id: str) -> ObjectKey:
        if self._points.concurrent:
            row = next((r for r in await self._key_rows.first((tenant_id,), object_id) if r.patient_id == patient_id),
                       None)
        else:
            row = await self._points.first(_OBJECT_KEY_ROW, {"t": tenant_id, "p": patient_id, "o": object_id})
        if row is None:
            self.evict(tenant_id, patient_id, object_id)
            raise KeyDestroyed("object key does not exist")
        cache_key = ("obj", tenant_id, patient_id, object_id, row.key_id)
        cached = self._cache.get(cache_key)
        if isinstance(cached, ObjectKey):
            # The cached object itself: it carries the blob cipher derived from it
            # (keys.blobio.cipher_for), which goes when the cache drops the key.
            return cached
        patient = await self._unwrap_dek(
            tenant_id, patient_id, row.dek_id, row.kek_version, row.dek_wrapped
        )
        associated = aead.aad(
            aead.LABEL_OBJECT_KEY, tenant_id, patient_id, object_id, row.dek_id, row.key_id
        )
        key = ObjectKey(aead.open_sealed(patient.key, row.wrapped, associated), key_id=row.key_id)
        self._cache.put(cache_key, key)
        return key

    async def destroy_object(self, tenant_id: str, patient_id: str, object_id: str) -> str | None:
        """Shred one object's key; return its key id, or None when there was none."""
        where = (
            (object_keys.c.tenant_id == tenant_id)
            & (object_keys.c.patient_id == patient_id)
            & (object_keys.c.object_id == object_id)
        )
        async with self._writer.begin() as conn:
            key_id = await conn.scalar(sa.select(object_keys.c.key_id).where(where).with_for_update())
            if key_id is not None:
                await self._overwrite(conn, object_keys, where)
                await conn.execute(object_keys.delete().where(where))
                # A copy made before now holds this key wrapped by the live DEK: renew the
                # DEK at the next rotation so that copy dies with its epochs.
                await self._request(conn, tenant_id, patient_id, OBJECT_DELETE)
        await self._cache.destroyed(("object", tenant_id, patient_id, object_id))
        if key_id is None:
            return None
        await self._harden(object_keys)
        return str(key_id)

    # -- personal fields and blind indexes --------------------------------------------

    async def seal_field(
        self, tenant_id: str, patient_id: str, *, table: str, column: str, row_id: str, value: bytes | str,
        rectification: bool = False,
    ) -> bytes:
        """AES-256-GCM under the patient DEK; AAD names tenant, patient, table, column and row.

        While the patient's DEK is being renewed, under the next DEK (keys/renewal.py).
        ``rectification=True`` (a correction replacing an older value): the old value
        may sit in a copy, so the DEK is marked for renewal at the next rotation."""
        if rectification:
            await self.request_dek_renewal(tenant_id, patient_id, RECTIFICATION)
        patient = await self._sealing_key(tenant_id, patient_id)
        plaintext = value.encode() if isinstance(value, str) else bytes(value)
        associated = aead.aad(aead.LABEL_FIELD, tenant_id, patient_id, table, column, row_id)
        return aead.seal(patient.key, plaintext, associated)

    async def _sealing_key(self, tenant_id: str, patient_id: str) -> PatientKey:
        """The DEK new values are sealed under: the pending one while a renewal runs. One
        SELECT (the DEK row, outer-joined with a pending DEK)."""
        mine = (patient_deks.c.tenant_id == tenant_id) & (patient_deks.c.patient_id == patient_id)
        query = sa.select(
            patient_deks.c.dek_id, patient_deks.c.kek_version, patient_deks.c.wrapped,
            pending_deks.c.dek_id.label("next_id"), pending_deks.c.kek_version.label("next_version"),
            pending_deks.c.wrapped.label("next_wrapped"),
        ).select_from(patient_deks.outerjoin(pending_deks, sa.and_(
            pending_deks.c.tenant_id == patient_deks.c.tenant_id, pending_deks.c.patient_id == patient_deks.c.patient_id,
        ))).where(mine)
        async with self._reader.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            self.evict(tenant_id, patient_id)
            raise KeyDestroyed("patient key does not exist")
        if row.next_id is not None:
            return await self._unwrap_dek(tenant_id, patient_id, row.next_id, row.next_version, row.next_wrapped)
        return await self._unwrap_dek(tenant_id, patient_id, row.dek_id, row.kek_version, row.wrapped)

    async def open_field(
        self, tenant_id: str, patient_id: str, *, table: str, column: str, row_id: str, sealed: bytes
    ) -> bytes:
        patient = await self.patient_key(tenant_id, patient_id)
        associated = aead.aad(aead.LABEL_FIELD, tenant_id, patient_id, table, column, row_id)
        try:
            return aead.open_sealed(patient.key, sealed, associated)
        except IntegrityError:
            # Sealed under the next DEK by a renewal in progress (keys/renewal.py)?
            pending = await self._pending_key(tenant_id, patient_id)
            if pending is None:
                raise
            return aead.open_sealed(pending.key, sealed, associated)

    async def open_fields(
        self, tenant_id: str, patient_id: str, *, table: str, column: str, sealed: dict[str, bytes]
    ) -> dict[str, bytes]:
        """:meth:`open_field` for several rows of one patient (``{row_id: sealed}``): the
        DEK row is read (and checked to exist) once, not once per row."""
        patient = await self.patient_key(tenant_id, patient_id)
        pending: PatientKey | None = None
        opened = {}
        for row_id, value in sealed.items():
            associated = aead.aad(aead.LABEL_FIELD, tenant_id, patient_id, table, column, row_id)
            try:
                opened[row_id] = aead.open_sealed(patient.key, value, associated)
            except IntegrityError:
                pending = pending or await self._pending_key(tenant_id, patient_id)
                if pending is None:
                    raise
                opened[row_id] = aead.open_sealed(pending.key, value, associated)
        return opened

    async def blind_index(self, tenant_id: str, purpose: str, value: str) -> str:
        """Keyed HMAC-SHA256 (hex) of the normalised value under the **current epoch's**
        index key, for lookups without plaintext. It changes with every KEK rotation: the
        vault re-indexes live rows under the new key (vault/patients/index.py), and once an
        epoch is destroyed no live key recomputes an index it made (an old backup's index
        of an erased patient's MRN can no longer be confirmed)."""
        version = await self._current_version(tenant_id)
        return _hmac_index(await self._epoch_index_key(tenant_id, version), purpose, value)

    async def blind_indexes(self, tenant_id: str, purpose: str, value: str) -> list[str]:
        """The value's index under every live epoch, the current one first: what a lookup
        matches while rows are being re-indexed after a rotation."""
        async with self._reader.connect() as conn:
            versions = (await conn.scalars(
                sa.select(tenant_keks.c.version).where(tenant_keks.c.tenant_id == tenant_id,
                                                       tenant_keks.c.state != "destroyed")
                .order_by(tenant_keks.c.version.desc()))).all()
        if not versions:
            raise KeyNotFound("tenant has no key hierarchy; call ensure_tenant first")
        current = await self._current_version(tenant_id)
        found: list[str] = []
        for version in sorted(versions, key=lambda v: (v != current, -v)):
            try:
                index = _hmac_index(await self._epoch_index_key(tenant_id, int(version)), purpose, value)
            except KeyDestroyed:
                continue  # destroyed meanwhile
            if index not in found:
                found.append(index)
        return found

    async def legacy_blind_index(self, tenant_id: str, purpose: str, value: str) -> str:
        """The index as the code before per-epoch keys made it, under the tenant's legacy
        long-lived key; ``KeyDestroyed`` once that key is retired (or for newer tenants)."""
        return _hmac_index(await self._index_key(tenant_id), purpose, value)

    async def _epoch_index_key(self, tenant_id: str, version: int) -> bytes:
        cache_key = ("eidx", tenant_id, version)
        key = self._cache.get(cache_key)
        if key is not None:
            return key
        async with self._reader.connect() as conn:
            row = (await conn.execute(
                sa.select(tenant_keks.c.index_wrapped, tenant_keks.c.root_version, tenant_keks.c.state)
                .where(tenant_keks.c.tenant_id == tenant_id, tenant_keks.c.version == version))).first()
        if row is None:
            raise KeyNotFound("no such KEK version")
        if row.state == "destroyed":
            raise KeyDestroyed("the epoch is destroyed")
        if row.index_wrapped is None:
            key = await self._index_key(tenant_id)  # a version from before per-epoch index keys
        else:
            key = await self._root_unwrap(row.root_version, row.index_wrapped, epoch_index_context(tenant_id, version))
        self._cache.put(cache_key, key)
        return key

    # -- values that die with the epoch (erasure reasons) ------------------------------

    async def seal_for_epoch(self, tenant_id: str, label: str, *ids: str, value: bytes) -> bytes:
        """AES-256-GCM under a key of the **current epoch** (derived from its index key for
        ``label``): readable until that epoch is destroyed, then by nobody — copies
        included. Format ``0x02 ‖ u32 KEK version ‖ sealed``."""
        version = await self._current_version(tenant_id)
        key = _subkey(await self._epoch_index_key(tenant_id, version), label)
        return EPOCH_SEALED + version.to_bytes(4, "big") + aead.seal(key, value, aead.aad(label, *ids))

    async def open_for_epoch(self, tenant_id: str, label: str, *ids: str, sealed: bytes) -> bytes:
        """``KeyDestroyed`` once the epoch it was sealed in is destroyed."""
        if len(sealed) < 5 or sealed[:1] != EPOCH_SEALED:
            raise IntegrityError("not a value sealed for an epoch")
        version = int.from_bytes(sealed[1:5], "big")
        key = _subkey(await self._epoch_index_key(tenant_id, version), label)
        return aead.open_sealed(key, sealed[5:], aead.aad(label, *ids))

    # -- long-lived keys, one per purpose --------------------------------------------------

    async def purpose_key(self, tenant_id: str, purpose: str, *, legacy_derivation: str | None = None) -> bytes:
        """A long-lived tenant key used for ``purpose`` only (signed URLs, webhook secrets,
        receipts' patient references), wrapped by the service root version and never
        destroyed; created on first use. ``legacy_derivation``: for a tenant that still has
        its legacy index key, the new key *is* the value the code before derived for this
        purpose (``legacy_blind_index(tenant, legacy_derivation, tenant_id)``), so what
        was sealed with it still opens after the legacy key is retired."""
        if not purpose or len(purpose) > 64:
            raise KeysError("a purpose is a non-empty name of at most 64 characters")
        cache_key = ("purpose", tenant_id, purpose)
        key = self._cache.get(cache_key)
        if key is not None:
            return key
        context = purpose_key_context(tenant_id, purpose)
        row = await self._purpose_row(tenant_id, purpose)
        if row is None:
            await self._current_version(tenant_id)  # KeyNotFound for an unknown tenant
            fresh = secrets.token_bytes(KEY_BYTES)
            if legacy_derivation is not None:
                try:
                    fresh = bytes.fromhex(await self.legacy_blind_index(tenant_id, legacy_derivation, tenant_id))
                except KeyDestroyed:
                    pass
            service = await self._service_version()
            wrapped = await self._root.wrap(service, fresh, context)
            try:
                async with self._writer.begin() as conn:
                    await conn.execute(tenant_purpose_keys.insert().values(
                        tenant_id=tenant_id, purpose=purpose, wrapped=wrapped, root_version=service, created_at=now()))
            except sa_exc.IntegrityError:
                pass  # another node made it first; theirs wins
            row = await self._purpose_row(tenant_id, purpose)
            if row is None:
                raise KeysError("the purpose key was neither created nor found")
        key = await self._root_unwrap(row.root_version, row.wrapped, context)
        self._cache.put(cache_key, key)
        return key

    async def purpose_hmac(self, tenant_id: str, purpose: str, value: str) -> str:
        """HMAC-SHA256 (hex) of ``value`` exactly (no normalisation) under the purpose's key."""
        key = await self.purpose_key(tenant_id, purpose)
        return hmac.new(key, aead.aad(purpose, value), hashlib.sha256).hexdigest()

    async def _purpose_row(self, tenant_id: str, purpose: str) -> Any:
        async with self._reader.connect() as conn:
            return (await conn.execute(sa.select(tenant_purpose_keys).where(
                tenant_purpose_keys.c.tenant_id == tenant_id, tenant_purpose_keys.c.purpose == purpose))).first()

    async def retire_legacy_index_key(self, tenant_id: str, *, keep: Iterable[tuple[str, str]] = ()) -> bool:
        """Destroy the tenant's legacy long-lived index key once no live epoch uses it for
        indexes; ``keep``: (purpose, legacy derivation) pairs whose purpose keys are made
        from it first (see :meth:`purpose_key`). True when it was retired now."""
        async with self._reader.connect() as conn:
            wrapped = await conn.scalar(sa.select(tenants.c.index_key_wrapped).where(tenants.c.tenant_id == tenant_id))
            needed = await conn.scalar(sa.select(sa.func.count()).select_from(tenant_keks).where(
                tenant_keks.c.tenant_id == tenant_id, tenant_keks.c.state != "destroyed",
                tenant_keks.c.index_wrapped.is_(None)))
        if wrapped is None or needed:
            return False
        for purpose, derivation in keep:
            await self.purpose_key(tenant_id, purpose, legacy_derivation=derivation)
        where = tenants.c.tenant_id == tenant_id
        async with self._writer.begin() as conn:
            if not self._sqlite:
                await conn.execute(tenants.update().where(where).values(
                    index_key_wrapped=secrets.token_bytes(len(wrapped))))
            await conn.execute(tenants.update().where(where).values(index_key_wrapped=None))
        self._cache.evict(("idx", tenant_id))
        self._cache.evict_where(lambda k: k[0] == "eidx" and k[1] == tenant_id)
        await self._harden(tenants)
        return True

    # -- backups ---------------------------------------------------------------------

    async def reshred(self, key_ids: Iterable[str]) -> int:
        """Shred again any of these DEK / object key ids that a restored backup brought back.

        Object keys under a listed DEK go too. Returns the number of rows removed.
        """
        ids = sorted(set(key_ids))
        removed = 0
        async with self._writer.begin() as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                for table, where in (
                    (patient_deks, patient_deks.c.dek_id.in_(chunk)),
                    (pending_deks, pending_deks.c.dek_id.in_(chunk)),
                    (object_keys, object_keys.c.key_id.in_(chunk) | object_keys.c.dek_id.in_(chunk)),
                ):
                    await self._overwrite(conn, table, where)
                    removed += (await conn.execute(table.delete().where(where))).rowcount
            # A renewal's next DEK of a patient whose DEK is gone (erased since the backup).
            orphan = ~sa.exists().where(patient_deks.c.tenant_id == pending_deks.c.tenant_id,
                                        patient_deks.c.patient_id == pending_deks.c.patient_id)
            await self._overwrite(conn, pending_deks, orphan)
            removed += (await conn.execute(pending_deks.delete().where(orphan))).rowcount
        if removed:
            await self._cache.destroyed(("all",))
            await self._harden(patient_deks, object_keys)
        return removed

    # -- health ----------------------------------------------------------------------

    async def schema_status(self) -> str:
        """How this store's schema compares with the migrations shipped (keys.versions:
        one read of the version table, no Alembic)."""
        from keys.versions import keystore_status

        async with self._reader.connect() as conn:
            return await conn.run_sync(keystore_status, schema=None if db.is_sqlite(self._engine) else self._schema)

    async def check_root_key(self) -> bool:
        """Prove the configured root key opens this store: unwrap one wrapped key,
        bypassing the cache. False when the store holds nothing to unwrap yet; raises
        :class:`IntegrityError` (wrong root key) or :class:`ProviderError`."""
        signing = await self._signing_row()
        if signing is not None:
            await self._root_unwrap(signing.root_version, signing.wrapped, _SIGNING_CONTEXT)
            return True
        async with self._reader.connect() as conn:
            row = (await conn.execute(
                sa.select(tenant_keks.c.tenant_id, tenant_keks.c.version, tenant_keks.c.wrapped,
                          tenant_keks.c.root_version)
                .join(tenants, sa.and_(tenants.c.tenant_id == tenant_keks.c.tenant_id,
                                       tenants.c.current_kek_version == tenant_keks.c.version))
                .limit(1))).first()
        if row is not None and row.wrapped is not None:
            await self._root_unwrap(row.root_version, row.wrapped, kek_context(row.tenant_id, row.version))
            return True
        return False

    # -- service signing key -----------------------------------------------------------

    async def signing_key(self) -> Ed25519PrivateKey:
        """The service's Ed25519 key (erasure receipts, audit checkpoints), created on first use."""
        if self._signing is not None:
            return self._signing
        row = await self._signing_row()
        if row is None:
            fresh = Ed25519PrivateKey.generate()
            service = await self._service_version()  # must verify forever: never destroyed
            wrapped = await self._root.wrap(service, fresh.private_bytes_raw(), _SIGNING_CONTEXT)
            try:
                async with self._writer.begin() as conn:
                    await conn.execute(
                        service_keys.insert().values(
                            name=_SIGNING_KEY,
                            wrapped=wrapped,
                            root_version=service,
                            public_key_pem=_public_pem(fresh),
                            created_at=now(),
                        )
                    )
            except sa_exc.IntegrityError:
                pass  # another node created it first; use theirs
            row = await self._signing_row()
            if row is None:
                raise KeysError("the service signing key was neither created nor found")
        private = Ed25519PrivateKey.from_private_bytes(
            await self._root_unwrap(row.root_version, row.wrapped, _SIGNING_CONTEXT))
        if _public_pem(private) != row.public_key_pem:
            raise IntegrityError("stored signing public key does not match the private key")
        self._signing = private
        return private

    async def public_key_pem(self) -> str:
        return _public_pem(await self.signing_key())

    async def _signing_row(self) -> sa.Row[Any] | None:
        async with self._reader.connect() as conn:
            result = await conn.execute(sa.select(service_keys).where(service_keys.c.name == _SIGNING_KEY))
            return result.first()


async def holds_keys(url: str, *, schema: str = SCHEMA) -> bool:
    """Whether the key store at ``url`` holds anything wrapped by a root key; False for
    a store that does not exist or is not migrated yet. Decides whether a missing
    local root key may be created (only for an empty store)."""
    engine = db.create_engine(url, schema=schema)
    try:
        async with engine.connect() as conn:
            tenant = await conn.scalar(sa.select(tenants.c.tenant_id).limit(1))
            signing = await conn.scalar(sa.select(service_keys.c.name).limit(1))
    except sa_exc.DBAPIError:
        return False  # no tables yet: a fresh store
    finally:
        await engine.dispose()
    return tenant is not None or signing is not None


EPOCH_SEALED = b"\x02"


def _hmac_index(key: bytes, purpose: str, value: str) -> str:
    if not purpose or "\x00" in purpose:
        raise KeysError("blind index purpose must be a non-empty name")
    return hmac.new(key, aead.aad(purpose, normalise_for_index(value)), hashlib.sha256).hexdigest()


def _subkey(key: bytes, label: str) -> bytes:
    # A NUL first byte: no blind index's HMAC input (a purpose without NUL) starts so.
    return hmac.new(key, b"\x00vault.keys.v1.epoch-subkey\x00" + label.encode(), hashlib.sha256).digest()


def normalise_for_index(value: str) -> str:
    """NFKC, case-folded, whitespace collapsed: ``" AB  12 "`` and ``"ab 12"`` index alike."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def _public_pem(private: Ed25519PrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
