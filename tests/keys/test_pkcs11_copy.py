"""Copy-then-destroy on a real SoftHSM2 token (``pkcs11:``): a copy of the key store made
before an erasure, with the token's current keys, decrypts nothing of the erased patient
(nor anything wrapped only under the destroyed epoch) once the old KEK version and its
key object are destroyed, while the live store serves every other patient."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from keys import db
from keys.errors import KeyDestroyed, KeysError
from keys.hierarchy import epoch_index_context, kek_context
from keys.models import object_keys, patient_deks, tenant_keks
from keys.pkcs11 import Pkcs11RootKey
from keys.store import KeyStore
from tests.keys.test_store import Backend, backend, make_patient, pg_schema, rows  # noqa: F401
from tests.support.softhsm import softhsm  # noqa: F401  (session fixture)


@pytest.fixture
async def hsm(softhsm) -> Pkcs11RootKey:  # noqa: F811
    provider = Pkcs11RootKey.from_url(softhsm.url())
    yield provider
    await provider.close()


async def test_a_copy_opens_nothing_of_the_erased_patient_with_the_tokens_keys(backend: Backend, hsm, tmp_path: Path):
    store = await KeyStore.open(backend.url, hsm, schema=backend.schema, cache_ttl=0)
    tenant, other_tenant = f"clinic-{uuid.uuid4()}", f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    await store.ensure_tenant(other_tenant)
    victim, victim_keys = await make_patient(store, tenant, objects=2)
    survivor, survivor_keys = await make_patient(store, tenant, objects=2)
    neighbour, neighbour_keys = await make_patient(store, other_tenant, objects=1)
    victim_index = await store.blind_index(tenant, "patient.external_ref", "MRN-victim")

    # The copy: every key row of the tenant now (and, on SQLite, the whole file).
    copy_keks = await rows(backend, tenant_keks, tenant_keks.c.tenant_id == tenant)
    copy_deks = await rows(backend, patient_deks, patient_deks.c.patient_id == victim)
    copy_objects = await rows(backend, object_keys, object_keys.c.patient_id == victim)
    assert len(copy_keks) == 1 and len(copy_deks) == 1 and len(copy_objects) == 2
    copy_file = None
    if backend.path is not None:
        await db.sqlite_checkpoint(store._engine)
        copy_file = tmp_path / "copy.db"
        shutil.copyfile(backend.path, copy_file)

    await store.destroy_patient(tenant, victim)
    assert await store.rotate_kek(tenant) == 2
    assert await store.destroy_kek_version(tenant, 1) is not None

    # Every root-key version the token still holds for this store, against the copy's KEK
    # and epoch index key: none opens them (the epoch's key object is gone, and every other
    # version is bound to its own name and context).
    (old,) = copy_keks
    live_versions = [v.version_id for v in await store.root_versions() if v.destroyed_at is None]
    assert old.root_version not in live_versions and live_versions
    for wrapped, context in ((old.wrapped, kek_context(tenant, 1)), (old.index_wrapped, epoch_index_context(tenant, 1))):
        with pytest.raises(KeyDestroyed):
            await hsm.unwrap(old.root_version, wrapped, context)
        for version in live_versions:
            with pytest.raises(KeysError):
                await hsm.unwrap(version, wrapped, context)
    if copy_file is not None:
        from_copy = await KeyStore.open(f"sqlite+aiosqlite:///{copy_file}", hsm, cache_ttl=0)
        for patient, keys in ((victim, victim_keys), (survivor, survivor_keys)):
            with pytest.raises(KeysError):
                await from_copy.patient_key(tenant, patient)
            for object_id in keys:
                with pytest.raises(KeysError):
                    await from_copy.object_key(tenant, patient, object_id)
        with pytest.raises(KeysError):
            await from_copy.blind_index(tenant, "patient.external_ref", "MRN-victim")
        await from_copy.close()
    # The live store: the erased patient is gone, its index is made by no live key, and
    # every other patient (this tenant and the next) is served.
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, victim)
    assert victim_index not in await store.blind_indexes(tenant, "patient.external_ref", "MRN-victim")
    for tenant_id, patient, keys in ((tenant, survivor, survivor_keys), (other_tenant, neighbour, neighbour_keys)):
        for object_id, key in keys.items():
            assert bytes(await store.object_key(tenant_id, patient, object_id)) == key
    other_versions = [v for v in await store.root_versions(tenant_id=other_tenant)]
    assert other_versions and all(v.destroyed_at is None for v in other_versions)
    await store.close()
