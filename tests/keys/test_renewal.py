"""DEK renewal: after one object is shredded or a sealed field corrected, the next KEK
rotation gives the patient a new DEK, so a copy made before (a backup's wrapped object
key, a backup's old field value) no longer opens with the live keys once the old epoch
is destroyed — while every other object and field of the patient still reads live."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keys import aead
from keys.errors import IntegrityError, KeyDestroyed
from keys.hierarchy import kek_context
from keys.models import object_keys, patient_deks, pending_deks, tenant_keks
from keys.providers import open_root_key
from keys.store import KeyStore
from tests.keys.test_store import Backend, backend, make_patient, pg_schema, rows  # noqa: F401

WHERE = {"table": "patients", "column": "notes"}


class Fields:
    """The metadata side, as the vault keeps it: sealed values by row, resealed on renewal."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.sealed: dict[tuple[str, str], bytes] = {}
        self.resealed: list[str] = []

    async def put(self, tenant: str, patient: str, value: str, *, rectification: bool = False) -> None:
        self.sealed[(tenant, patient)] = await self.store.seal_field(tenant, patient, row_id=patient, value=value,
                                                                    rectification=rectification, **WHERE)

    async def get(self, tenant: str, patient: str) -> str:
        return (await self.store.open_field(tenant, patient, row_id=patient, sealed=self.sealed[(tenant, patient)],
                                            **WHERE)).decode()

    async def reseal(self, tenant: str, patient: str) -> None:
        self.resealed.append(patient)
        await self.put(tenant, patient, await self.get(tenant, patient))


@pytest.fixture
async def store(backend: Backend, tmp_path: Path):
    provider = open_root_key((tmp_path / "keyring").as_uri(), production=False)
    opened = await KeyStore.open(backend.url, provider, schema=backend.schema, cache_ttl=0)
    opened.provider = provider  # type: ignore[attr-defined]
    yield opened
    await opened.close()


def _opens(key: bytes, sealed: bytes, associated: bytes) -> bool:
    try:
        aead.open_sealed(key, sealed, associated)
        return True
    except IntegrityError:
        return False


async def test_a_deleted_photo_in_a_copy_dies_with_the_old_epoch(backend: Backend, store: KeyStore) -> None:
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    patient, keys = await make_patient(store, tenant, objects=3)
    bystander, bystander_keys = await make_patient(store, tenant, objects=1)
    fields = Fields(store)
    await fields.put(tenant, patient, "allergic to latex")
    deleted, *kept = keys
    # The backup: the key rows as they are now.
    (copy_key,) = await rows(backend, object_keys, object_keys.c.object_id == deleted)
    (copy_dek,) = await rows(backend, patient_deks, patient_deks.c.patient_id == patient)
    (copy_v1,) = await rows(backend, tenant_keks, tenant_keks.c.tenant_id == tenant)
    copy_aad = aead.aad(aead.LABEL_OBJECT_KEY, tenant, patient, deleted, copy_key.dek_id, copy_key.key_id)

    shred_at = datetime.now(UTC)
    assert await store.destroy_object(tenant, patient, deleted) == copy_key.key_id
    # The trap, shown: until the DEK is renewed the live DEK opens the copy's object key,
    # so no date can be promised for this photo.
    live = await store.patient_key(tenant, patient)
    assert _opens(live.key, copy_key.wrapped, copy_aad)
    schedule = await store.renewal_schedule(tenant, patient, since=shred_at)
    assert schedule.awaiting_renewal and schedule.irrecoverable_after is None
    assert await store.pending_renewals(tenant) == [patient]

    assert await store.rotate_kek(tenant, reseal=fields.reseal) == 2
    assert fields.resealed == [patient]  # only the marked patient
    assert await store.pending_renewals(tenant) == []
    assert not await rows(backend, pending_deks, pending_deks.c.tenant_id == tenant)
    schedule = await store.renewal_schedule(tenant, patient, since=shred_at)
    (v1, _v2) = await store.kek_versions(tenant)
    assert not schedule.awaiting_renewal
    assert [e.version_id for e in schedule.epochs] == [v1.root_version]
    assert schedule.irrecoverable_after == v1.destroy_after
    await store.destroy_kek_version(tenant, 1)

    # The copy, with the live keys: the new DEK does not open the copy's object key (under
    # either DEK id), and the copy's DEK row needs the destroyed epoch.
    renewed = await store.patient_key(tenant, patient)
    assert renewed.dek_id != copy_dek.dek_id
    for dek_id in (copy_key.dek_id, renewed.dek_id):
        assert not _opens(renewed.key, copy_key.wrapped,
                          aead.aad(aead.LABEL_OBJECT_KEY, tenant, patient, deleted, dek_id, copy_key.key_id))
    with pytest.raises(KeyDestroyed):
        await store.provider.unwrap(copy_v1.root_version, copy_v1.wrapped, kek_context(tenant, 1))  # type: ignore[attr-defined]
    # Everything else of the patient (and of the tenant) reads live.
    for object_id in kept:
        assert bytes(await store.object_key(tenant, patient, object_id)) == keys[object_id]
    assert await fields.get(tenant, patient) == "allergic to latex"
    for object_id, key in bystander_keys.items():
        assert bytes(await store.object_key(tenant, bystander, object_id)) == key
    with pytest.raises(KeyDestroyed):
        await store.object_key(tenant, patient, deleted)


async def test_a_rectified_value_in_a_copy_dies_with_the_old_epoch(backend: Backend, store: KeyStore) -> None:
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    patient, keys = await make_patient(store, tenant, objects=2)
    fields = Fields(store)
    await fields.put(tenant, patient, "old diagnosis")
    copy_value = fields.sealed[(tenant, patient)]
    copy_aad = aead.aad(aead.LABEL_FIELD, tenant, patient, "patients", "notes", patient)

    await fields.put(tenant, patient, "corrected diagnosis", rectification=True)
    assert _opens((await store.patient_key(tenant, patient)).key, copy_value, copy_aad)  # the trap
    assert await store.pending_renewals(tenant) == [patient]
    await store.rotate_kek(tenant, reseal=fields.reseal)
    await store.destroy_kek_version(tenant, 1)

    assert not _opens((await store.patient_key(tenant, patient)).key, copy_value, copy_aad)
    assert await fields.get(tenant, patient) == "corrected diagnosis"
    for object_id, key in keys.items():
        assert bytes(await store.object_key(tenant, patient, object_id)) == key


async def test_fields_written_during_a_renewal_and_an_erasure_midway(backend: Backend, store: KeyStore) -> None:
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    patient, _ = await make_patient(store, tenant, objects=1)
    other, _ = await make_patient(store, tenant, objects=1)
    fields = Fields(store)
    await fields.put(tenant, patient, "before")
    await fields.put(tenant, other, "theirs")
    await store.request_dek_renewal(tenant, patient, "rectification")
    await store.request_dek_renewal(tenant, other, "rectification")

    async def reseal_and_write(tenant_id: str, patient_id: str) -> None:
        await fields.reseal(tenant_id, patient_id)
        if patient_id == patient:
            # A write while the next DEK is pending lands under it, and reads fall back to it.
            await fields.put(tenant_id, patient_id, "during")
            assert await fields.get(tenant_id, patient_id) == "during"
        else:
            await store.destroy_patient(tenant_id, patient_id)  # erased mid-renewal

    assert await store.renew_pending(tenant, reseal_and_write) == 1
    assert await fields.get(tenant, patient) == "during"
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, other)
    # The erased patient's next DEK went with the erasure; nothing is pending any more.
    assert not await rows(backend, pending_deks, pending_deks.c.tenant_id == tenant)
    assert await store.pending_renewals(tenant) == []
