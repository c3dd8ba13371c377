"""Root-key epochs: a copy of the key store made while an epoch lived opens nothing of
that epoch once it is destroyed, for ``file:`` and for KMS (the strict fake: moto does
not refuse a key pending deletion); receipts' dates come from the recorded schedule;
a store made before epochs is upgraded onto them."""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys import aead, db
from keys.errors import KeyDestroyed, KeyInUse, KeysError
from keys.hierarchy import index_key_context, kek_context
from keys.keyring import FileKeyring
from keys.kms import AwsKmsEpochs
from keys.migrate import upgrade
from keys.models import patient_deks, root_versions, service_keys, tenant_keks, tenants
from keys.providers import LEGACY_VERSION, context_aad, open_root_key
from keys.store import KeyStore
from tests.keys.test_store import PG_URL, Backend, backend, make_patient, pg_schema, rows  # noqa: F401
from tests.support.strict_kms import StrictKms

WINDOW = 35


@pytest.fixture(params=["file", "strict-kms"])
def provider(request, tmp_path: Path):
    if request.param == "file":
        return open_root_key((tmp_path / "keyring").as_uri(), production=False)
    return AwsKmsEpochs(StrictKms(), prefix="alias/vault")


async def open_store(backend: Backend, provider, **kw) -> KeyStore:
    return await KeyStore.open(backend.url, provider, schema=backend.schema, cache_ttl=0,
                               backup_window_days=WINDOW, **kw)


async def test_a_copy_opens_nothing_of_a_destroyed_epoch(backend: Backend, provider, tmp_path: Path) -> None:
    store = await open_store(backend, provider)
    tenant, other_tenant = f"clinic-{uuid.uuid4()}", f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    await store.ensure_tenant(other_tenant)
    victim, victim_keys = await make_patient(store, tenant, objects=2)
    survivor, survivor_keys = await make_patient(store, tenant, objects=2)
    neighbour, neighbour_keys = await make_patient(store, other_tenant, objects=1)
    # The backup: every row as it is now (and, on SQLite, the whole file).
    backup_keks = await rows(backend, tenant_keks, tenant_keks.c.tenant_id == tenant)
    backup_deks = {r.patient_id: r for r in await rows(backend, patient_deks, patient_deks.c.tenant_id == tenant)}
    copy = None
    if backend.path is not None:
        await db.sqlite_checkpoint(store._engine)
        copy = tmp_path / "copy.db"
        shutil.copyfile(backend.path, copy)

    await store.destroy_patient(tenant, victim)
    assert await store.rotate_kek(tenant) == 2
    with pytest.raises(KeyInUse):
        await store.destroy_kek_version(tenant, 2)  # never the current epoch
    irrecoverable = await store.destroy_kek_version(tenant, 1)
    assert irrecoverable is not None

    # The copy, with today's root keys: the old epoch's KEK no longer unwraps, so neither
    # the erased patient's DEK nor anything else wrapped only under it opens.
    (old,) = [r for r in backup_keks if r.version == 1]
    with pytest.raises(KeyDestroyed):
        await provider.unwrap(old.root_version, old.wrapped, kek_context(tenant, 1))
    if copy is not None:
        from_copy = await KeyStore.open(f"sqlite+aiosqlite:///{copy}", provider, cache_ttl=0)
        for patient, keys in ((victim, victim_keys), (survivor, survivor_keys)):
            with pytest.raises(KeysError):
                await from_copy.patient_key(tenant, patient)
            for object_id in keys:
                with pytest.raises(KeysError):
                    await from_copy.object_key(tenant, patient, object_id)
        await from_copy.close()
    assert backup_deks[victim].kek_version == 1

    # The live vault serves every other patient, in this tenant and the next.
    for tenant_id, patient, keys in ((tenant, survivor, survivor_keys), (other_tenant, neighbour, neighbour_keys)):
        for object_id, key in keys.items():
            assert bytes(await store.object_key(tenant_id, patient, object_id)) == key
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, victim)
    # Destroying tenant A's epoch left tenant B's untouched, and versions are not shared.
    versions = await store.root_versions()
    mine = {v.version_id for v in versions if v.tenant_id == tenant}
    theirs = {v.version_id for v in versions if v.tenant_id == other_tenant}
    assert mine and theirs and not mine & theirs
    assert all(v.destroyed_at is None for v in versions if v.tenant_id == other_tenant)
    instance = await store.instance_id()
    assert all(v.version_id.startswith(f"{instance}.") for v in versions)
    await store.close()


async def test_schedule_is_fixed_at_creation_and_receipts_use_it(backend: Backend, provider) -> None:
    store = await open_store(backend, provider)
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    (v1,) = await store.kek_versions(tenant)
    assert v1.destroy_after == _secs(v1.created_at + timedelta(days=WINDOW))
    delay = timedelta(days=7) if provider.name == "aws-kms" else timedelta(0)
    schedule = await store.erasure_schedule(tenant)
    assert schedule.provider == provider.name and not schedule.legacy
    assert schedule.irrecoverable_after == v1.destroy_after + delay
    assert (schedule.cancellable_until is not None) == (provider.name == "aws-kms")
    # A later, longer window applies only to versions made from then on.
    later = await KeyStore.open(backend.url, provider, schema=backend.schema, backup_window_days=60)
    await later.rotate_kek(tenant)
    v1_again, v2 = await later.kek_versions(tenant)
    assert v1_again.destroy_after == v1.destroy_after
    assert v2.destroy_after == _secs(v2.created_at + timedelta(days=60))
    assert (await later.erasure_schedule(tenant)).irrecoverable_after == v2.destroy_after + delay
    await later.close()
    await store.close()


def _secs(value: datetime) -> datetime:
    return value  # stored as given; both sides come from the same row


# -- upgrading a key store made before epochs ---------------------------------------------


async def make_legacy_store(backend: Backend, key: bytes) -> tuple[str, str, bytes]:
    """The layout the code before epochs wrote: everything under one root key, with the
    bare context as AAD (keys/providers.py at HEAD before this change)."""
    def wrap(plain: bytes, context: dict[str, str]) -> bytes:
        nonce = secrets.token_bytes(12)
        return b"\x01" + nonce + AESGCM(key).encrypt(nonce, plain, context_aad(context))

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keys.store import _public_pem

    tenant, patient, dek_id, kek, dek = f"clinic-{uuid.uuid4()}", str(uuid.uuid4()), str(uuid.uuid4()), \
        secrets.token_bytes(32), secrets.token_bytes(32)
    signing = Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    engine = db.create_engine(backend.url, schema=backend.schema)
    async with engine.begin() as conn:
        await conn.execute(tenants.insert().values(tenant_id=tenant, current_kek_version=1, created_at=now,
                                                   index_key_wrapped=wrap(secrets.token_bytes(32), index_key_context(tenant))))
        await conn.execute(tenant_keks.insert().values(tenant_id=tenant, version=1, state="active", created_at=now,
                                                       wrapped=wrap(kek, kek_context(tenant, 1))))
        await conn.execute(patient_deks.insert().values(
            tenant_id=tenant, patient_id=patient, dek_id=dek_id, kek_version=1, created_at=now,
            wrapped=aead.seal(kek, dek, aead.aad(aead.LABEL_DEK, tenant, patient, dek_id, 1))))
        if not (await conn.execute(sa.select(service_keys.c.name))).first():
            await conn.execute(service_keys.insert().values(
                name="ed25519", wrapped=wrap(signing.private_bytes_raw(), {"purpose": "service-signing", "name": "ed25519"}),
                public_key_pem=_public_pem(signing), created_at=now))
    await engine.dispose()
    return tenant, patient, dek


@pytest.fixture
async def legacy_backend(request, tmp_path: Path) -> Backend:
    if PG_URL and request.param == "postgresql":
        schema = f"keys_legacy_{secrets.token_hex(4)}"
        await upgrade(PG_URL, schema=schema, revision="0001")
        yield Backend("postgresql", PG_URL, schema)
        engine = db.create_engine(PG_URL, schema=schema)
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        await engine.dispose()
        return
    if request.param == "postgresql":
        pytest.skip("set VAULT_TEST_DATABASE_URL to run the key store against PostgreSQL")
    url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    await upgrade(url, revision="0001")
    yield Backend("sqlite", url, "keystore", tmp_path / "keys.db")


@pytest.mark.parametrize("legacy_backend", ["sqlite", "postgresql"], indirect=True)
async def test_upgrade_moves_a_legacy_store_onto_epochs(legacy_backend: Backend, tmp_path: Path) -> None:
    backend = legacy_backend
    key = secrets.token_bytes(32)
    tenant, patient, dek = await make_legacy_store(backend, key)
    old_file = tmp_path / "data" / "root.key"
    old_file.parent.mkdir()
    fd = os.open(old_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key)
    os.close(fd)
    await upgrade(backend.url, schema=backend.schema)
    ring = open_root_key((tmp_path / "keyring").as_uri(), production=False)
    assert isinstance(ring, FileKeyring) and ring.import_legacy(old_file) and not old_file.exists()
    store = await open_store(backend, ring)
    signing_before = await store.public_key_pem()
    assert (await store.erasure_schedule(tenant)).legacy
    assert (await store.erasure_schedule(tenant)).irrecoverable_after is None  # no date promised yet

    moved_at = datetime.now(UTC)
    assert await store.upgrade_legacy(at=moved_at)
    assert not await store.upgrade_legacy()  # idempotent
    fresh = await open_store(backend, ring)
    assert (await fresh.patient_key(tenant, patient)).key == dek
    assert await fresh.public_key_pem() == signing_before
    versions = await fresh.kek_versions(tenant)
    assert [(v.version, v.state, v.root_version is None) for v in versions] == [(1, "retired", True), (2, "active", False)]
    schedule = await fresh.erasure_schedule(tenant)
    assert schedule.legacy  # "legacy epoch" until the legacy KEK version is gone
    assert schedule.irrecoverable_after == max(moved_at + timedelta(days=WINDOW), versions[1].destroy_after)

    # After the window: the legacy KEK version is destroyed, then the legacy key itself.
    await fresh.destroy_kek_version(tenant, 1)
    assert await fresh.finish_root_destructions(at=moved_at) == []  # not before its date
    assert await fresh.finish_root_destructions(at=moved_at + timedelta(days=WINDOW, seconds=1)) == [LEGACY_VERSION]
    assert not (await fresh.erasure_schedule(tenant)).legacy
    assert (await fresh.patient_key(tenant, patient)).key == dek
    assert await fresh.public_key_pem() == signing_before
    with pytest.raises(KeyDestroyed):
        await ring.unwrap(LEGACY_VERSION, b"\x01" + b"0" * 60, kek_context(tenant, 1))
    (legacy,) = await rows(backend, root_versions, root_versions.c.version_id == LEGACY_VERSION)
    assert legacy.destroyed_at is not None
    await fresh.close()
    await store.close()


@pytest.mark.parametrize("legacy_backend", ["sqlite", "postgresql"], indirect=True)
async def test_a_legacy_tenants_long_lived_index_key_is_retired_with_its_epochs(legacy_backend: Backend,
                                                                                tmp_path: Path) -> None:
    backend = legacy_backend
    key = secrets.token_bytes(32)
    tenant, _patient, _dek = await make_legacy_store(backend, key)
    await upgrade(backend.url, schema=backend.schema)
    ring = open_root_key((tmp_path / "keyring").as_uri(), production=False)
    old_file = tmp_path / "root.key"
    fd = os.open(old_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key)
    os.close(fd)
    assert isinstance(ring, FileKeyring) and ring.import_legacy(old_file)
    store = await open_store(backend, ring)
    # Before the upgrade's rotation: v1 has no index key of its own, so indexes (and what
    # the old code derived from the tenant's index key) come from the long-lived one.
    legacy_index = await store.legacy_blind_index(tenant, "patient.external_ref", "MRN-1")
    assert await store.blind_index(tenant, "patient.external_ref", "MRN-1") == legacy_index
    webhook_legacy = bytes.fromhex(await store.legacy_blind_index(tenant, "webhooks.secret-key", tenant))
    await store.upgrade_legacy()
    current = await store.blind_index(tenant, "patient.external_ref", "MRN-1")
    assert current != legacy_index
    assert await store.blind_indexes(tenant, "patient.external_ref", "MRN-1") == [current, legacy_index]
    assert not await store.retire_legacy_index_key(tenant)  # v1 still indexes with it

    await store.destroy_kek_version(tenant, 1)
    assert await store.retire_legacy_index_key(tenant, keep=[("webhook-secret", "webhooks.secret-key")])
    fresh = await open_store(backend, ring)
    with pytest.raises(KeyDestroyed):
        await fresh.legacy_blind_index(tenant, "patient.external_ref", "MRN-1")
    assert await fresh.blind_indexes(tenant, "patient.external_ref", "MRN-1") == [current]
    # What was sealed with the old derived key still opens: the purpose key is that value.
    assert await fresh.purpose_key(tenant, "webhook-secret") == webhook_legacy
    (row,) = await rows(backend, tenants, tenants.c.tenant_id == tenant)
    assert row.index_key_wrapped is None
    await fresh.close()
    await store.close()


async def test_purpose_keys_are_apart_and_epoch_sealed_values_die_with_the_epoch(backend: Backend, provider) -> None:
    store = await open_store(backend, provider)
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    url_key, ref_key = await store.purpose_key(tenant, "signed-url"), await store.purpose_key(tenant, "patient-ref")
    assert url_key != ref_key and len(url_key) == 32
    sealed = await store.seal_for_epoch(tenant, "reason", tenant, "p1", value=b"asked by the patient")
    assert await store.open_for_epoch(tenant, "reason", tenant, "p1", sealed=sealed) == b"asked by the patient"
    with pytest.raises(KeysError):
        await store.open_for_epoch(tenant, "reason", tenant, "p2", sealed=sealed)  # bound to its ids
    await store.rotate_kek(tenant)
    assert await store.open_for_epoch(tenant, "reason", tenant, "p1", sealed=sealed) == b"asked by the patient"
    await store.destroy_kek_version(tenant, 1)
    with pytest.raises(KeyDestroyed):
        await store.open_for_epoch(tenant, "reason", tenant, "p1", sealed=sealed)
    # The long-lived purpose keys outlive the epochs.
    assert await store.purpose_key(tenant, "signed-url") == url_key
    assert await store.purpose_hmac(tenant, "patient-ref", "p1") == await store.purpose_hmac(tenant, "patient-ref", "p1")
    await store.close()
