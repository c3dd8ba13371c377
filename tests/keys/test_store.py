"""The key store against real databases: SQLite always, PostgreSQL when
``VAULT_TEST_DATABASE_URL`` is set (a fresh schema per run, dropped at the end).

Shredding is checked where it can be: on SQLite by scanning the raw bytes of the key
store file and its WAL for the key material read before the erasure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from keys import db
from keys.cache import KeyCache
from keys.errors import IntegrityError, KeyDestroyed, KeyExists, KeyInUse, KeyNotFound
from keys.migrate import upgrade
from keys.models import SCHEMA, metadata_for, object_keys, patient_deks, tenant_keks
from keys.providers import RootKeyProvider, open_root_key
from keys.store import KeyStore
from tests.support.cancel import cancel_inside

PG_URL = os.environ.get("VAULT_TEST_DATABASE_URL")


@dataclass
class Backend:
    name: str
    url: str
    schema: str
    path: Path | None = None  # SQLite file

    def raw_bytes(self) -> bytes:
        """Everything SQLite has on disk for the key store: main file and WAL."""
        assert self.path is not None
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("set VAULT_TEST_DATABASE_URL to run the key store against PostgreSQL")
    schema = f"keys_test_{secrets.token_hex(4)}"
    _in_own_loop(upgrade(PG_URL, schema=schema))
    yield schema
    _in_own_loop(_drop_schema(PG_URL, schema))


def _in_own_loop(coro) -> None:
    # Session set-up can happen while a test's event loop is running.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _drop_schema(url: str, schema: str) -> None:
    engine = db.create_engine(url, schema=schema)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "postgresql":
        request.getfixturevalue("pg_schema")  # skips without PostgreSQL
        # A schema per test: each test brings its own root-key provider, and a store's
        # long-lived service version lives in the provider that created it.
        schema = f"keys_t_{secrets.token_hex(4)}"
        await upgrade(PG_URL, schema=schema)
        yield Backend("postgresql", PG_URL or "", schema)
        await _drop_schema(PG_URL, schema)
        return
    path = tmp_path / "keys.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    yield Backend("sqlite", url, SCHEMA, path)


@pytest.fixture
def root(tmp_path: Path) -> RootKeyProvider:
    return open_root_key(f"file://{tmp_path}/root.key", production=False)


@pytest.fixture
async def store(backend: Backend, root: RootKeyProvider) -> AsyncIterator[KeyStore]:
    opened = await KeyStore.open(backend.url, root, schema=backend.schema)
    yield opened
    await opened.close()


@pytest.fixture
async def tenant(store: KeyStore) -> str:
    tenant_id = f"clinic-{uuid.uuid4()}"  # PostgreSQL runs share one schema
    assert await store.ensure_tenant(tenant_id) == 1
    return tenant_id


def sqlite_only(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("byte scanning needs the key store file (SQLite)")


async def rows(backend: Backend, table: sa.Table, *where) -> list[sa.Row]:
    """Read key-store rows directly, as an attacker with the database would."""
    engine = db.create_engine(backend.url, schema=backend.schema)
    async with engine.connect() as conn:
        result = (await conn.execute(sa.select(table).where(*where))).all()
    await engine.dispose()
    return result


async def make_patient(store: KeyStore, tenant: str, objects: int) -> tuple[str, dict[str, bytes]]:
    patient = str(uuid.uuid4())
    await store.create_patient_key(tenant, patient)
    keys = {}
    for _ in range(objects):
        object_id = str(uuid.uuid4())
        keys[object_id] = bytes(await store.new_object_key(tenant, patient, object_id))
    return patient, keys


# -- schema ----------------------------------------------------------------------------


async def test_migrations_match_the_models(backend: Backend) -> None:
    schema = None if backend.name == "sqlite" else backend.schema
    engine = db.create_engine(backend.url, schema=backend.schema)

    def diff(conn: sa.Connection) -> list:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": schema is not None,
                "include_name": lambda name, kind, _parent: kind != "schema" or name == schema,
                "version_table": "keystore_alembic_version",
                "version_table_schema": schema,
            },
        )
        return compare_metadata(context, metadata_for(schema))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
    await engine.dispose()
    await upgrade(backend.url, schema=backend.schema)  # idempotent at every start


async def test_sqlite_store_is_private_and_shreds_on_delete(backend: Backend, store: KeyStore) -> None:
    sqlite_only(backend)
    assert stat.S_IMODE(backend.path.stat().st_mode) == 0o600
    engine = db.create_engine(backend.url)
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("PRAGMA secure_delete")) == 1
        assert await conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
        assert await conn.scalar(sa.text("PRAGMA busy_timeout")) > 0
    await engine.dispose()


# -- hierarchy -------------------------------------------------------------------------


async def test_patient_key_is_stable_and_created_once(store: KeyStore, tenant: str) -> None:
    ids = await asyncio.gather(*(store.create_patient_key(tenant, "p-1") for _ in range(8)))
    assert len(set(ids)) == 1
    first, second = await store.patient_key(tenant, "p-1"), await store.patient_key(tenant, "p-1")
    assert first.dek_id == ids[0] and first.key == second.key and len(first.key) == 32
    assert "key=" not in repr(first)
    assert await store.ensure_tenant(tenant) == 1


async def test_unknown_tenant_or_patient(store: KeyStore, tenant: str) -> None:
    with pytest.raises(KeyNotFound):
        await store.create_patient_key("no-such-clinic", "p")
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, "never-created")


async def test_object_keys_are_bound_to_their_patient_and_tenant(store: KeyStore, tenant: str) -> None:
    patient, keys = await make_patient(store, tenant, objects=2)
    other, _ = await make_patient(store, tenant, objects=0)
    other_tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(other_tenant)
    for object_id, key in keys.items():
        fetched = await store.object_key(tenant, patient, object_id)
        assert fetched == key and len(fetched.key_id) == 36
        assert key.hex() not in repr(fetched)
        with pytest.raises(KeyDestroyed):
            await store.object_key(tenant, other, object_id)
        with pytest.raises(KeyDestroyed):
            await store.object_key(other_tenant, patient, object_id)
    with pytest.raises(KeyExists):
        await store.new_object_key(tenant, patient, next(iter(keys)))


async def test_wrapped_rows_are_bound_to_their_ids(
    backend: Backend, root: RootKeyProvider, store: KeyStore, tenant: str
) -> None:
    """Swapping wrapped keys between rows (a database-level attack) fails authentication."""
    a, keys_a = await make_patient(store, tenant, objects=1)
    b, keys_b = await make_patient(store, tenant, objects=1)
    (obj_a,), (obj_b,) = keys_a, keys_b
    (row_a,) = await rows(backend, object_keys, object_keys.c.object_id == obj_a)
    engine = db.create_engine(backend.url, schema=backend.schema)
    async with engine.begin() as conn:
        await conn.execute(
            object_keys.update().where(object_keys.c.object_id == obj_b).values(wrapped=row_a.wrapped)
        )
    await engine.dispose()
    fresh = await KeyStore.open(backend.url, root, schema=backend.schema)
    with pytest.raises(IntegrityError):
        await fresh.object_key(tenant, b, obj_b)
    assert await fresh.object_key(tenant, a, obj_a) == keys_a[obj_a]
    await fresh.close()


async def test_fields_are_sealed_under_the_patient_key(store: KeyStore, tenant: str) -> None:
    patient, _ = await make_patient(store, tenant, objects=0)
    where = {"table": "patients", "column": "display_name", "row_id": "row-1"}
    sealed = await store.seal_field(tenant, patient, **where, value="Ana María")
    assert b"Ana" not in sealed
    assert sealed != await store.seal_field(tenant, patient, **where, value="Ana María")
    assert await store.open_field(tenant, patient, **where, sealed=sealed) == "Ana María".encode()
    other, _ = await make_patient(store, tenant, objects=0)
    for name, value in (("table", "notes"), ("column", "external_ref"), ("row_id", "row-2")):
        with pytest.raises(IntegrityError):
            await store.open_field(tenant, patient, **{**where, name: value}, sealed=sealed)
    with pytest.raises(IntegrityError):
        await store.open_field(tenant, other, **where, sealed=sealed)
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    with pytest.raises(IntegrityError):
        await store.open_field(tenant, patient, **where, sealed=bytes(tampered))


async def test_blind_index(store: KeyStore, tenant: str) -> None:
    index = await store.blind_index(tenant, "external_ref", "AB-1234")
    assert len(index) == 64 and int(index, 16) >= 0
    assert await store.blind_index(tenant, "external_ref", "  ab-1234 ") == index
    assert await store.blind_index(tenant, "external_ref", "\uff21\uff22-1234") == index  # NFKC
    assert await store.blind_index(tenant, "email", "AB-1234") != index
    assert await store.blind_index(tenant, "external_ref", "AB-1235") != index
    other = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(other)
    assert await store.blind_index(other, "external_ref", "AB-1234") != index
    # Rotated with the KEK epoch: lookups match every live epoch, the current one first,
    # and once the old epoch is destroyed no live key makes its index again.
    await store.rotate_kek(tenant)
    rotated = await store.blind_index(tenant, "external_ref", "AB-1234")
    assert rotated != index
    assert await store.blind_indexes(tenant, "external_ref", " ab-1234") == [rotated, index]
    await store.destroy_kek_version(tenant, 1)
    assert await store.blind_indexes(tenant, "external_ref", "AB-1234") == [rotated]


# -- erasure ---------------------------------------------------------------------------


async def test_destroy_patient_shreds_every_key(backend: Backend, store: KeyStore, tenant: str) -> None:
    victim, victim_keys = await make_patient(store, tenant, objects=3)
    bystander, bystander_keys = await make_patient(store, tenant, objects=2)
    dek = await store.patient_key(tenant, victim)
    (dek_row,) = await rows(backend, patient_deks, patient_deks.c.dek_id == dek.dek_id)
    object_rows = await rows(backend, object_keys, object_keys.c.patient_id == victim)
    secrets_before = [dek.key, dek_row.wrapped, *victim_keys.values(), *(r.wrapped for r in object_rows)]
    if backend.name == "sqlite":
        on_disk = backend.raw_bytes()
        assert dek_row.wrapped in on_disk  # the scan below can see what it looks for
        assert dek.key not in on_disk

    destroyed = await store.destroy_patient(tenant, victim)

    assert destroyed == [dek.dek_id]  # O(1): the object keys die with the DEK that wraps them
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, victim)
    for object_id in victim_keys:
        with pytest.raises(KeyDestroyed):
            await store.object_key(tenant, victim, object_id)
    with pytest.raises(KeyDestroyed):
        await store.seal_field(tenant, victim, table="patients", column="notes", row_id="r", value="x")
    with pytest.raises(KeyDestroyed):
        await store.new_object_key(tenant, victim, "new-object")
    with pytest.raises(KeyDestroyed):
        await store.create_patient_key(tenant, victim)  # never again for an erased patient
    for object_id, key in bystander_keys.items():
        assert await store.object_key(tenant, bystander, object_id) == key
    assert await store.destroy_patient(tenant, victim) == []
    assert await rows(backend, patient_deks, patient_deks.c.patient_id == victim) == []
    # the dead object-key rows (ciphertext under a destroyed key) go in bulk, off the request path
    assert await store.purge_object_keys(tenant, victim) == sorted(r.key_id for r in object_rows)
    assert await rows(backend, object_keys, object_keys.c.patient_id == victim) == []
    with pytest.raises(KeyInUse):
        await store.purge_object_keys(tenant, bystander)  # never while the DEK lives
    if backend.name == "sqlite":
        on_disk = backend.raw_bytes()
        assert [s for s in secrets_before if s in on_disk] == []


async def test_destroy_is_seen_by_a_node_with_a_warm_cache(
    backend: Backend, root: RootKeyProvider, store: KeyStore, tenant: str
) -> None:
    patient, keys = await make_patient(store, tenant, objects=1)
    (object_id,) = keys
    other_node = await KeyStore.open(backend.url, root, schema=backend.schema, cache_ttl=3600)
    assert await other_node.object_key(tenant, patient, object_id) == keys[object_id]  # now cached there
    await store.destroy_patient(tenant, patient)  # no eviction message reaches other_node
    with pytest.raises(KeyDestroyed):
        await other_node.patient_key(tenant, patient)
    with pytest.raises(KeyDestroyed):
        await other_node.object_key(tenant, patient, object_id)
    await other_node.close()


async def test_destroy_object_leaves_the_others(backend: Backend, store: KeyStore, tenant: str) -> None:
    patient, keys = await make_patient(store, tenant, objects=3)
    doomed, *kept = keys
    (doomed_row,) = await rows(backend, object_keys, object_keys.c.object_id == doomed)
    kept_rows = await rows(backend, object_keys, object_keys.c.object_id.in_(kept))
    if backend.name == "sqlite":
        assert doomed_row.wrapped in backend.raw_bytes()

    assert await store.destroy_object(tenant, patient, doomed) == doomed_row.key_id

    with pytest.raises(KeyDestroyed):
        await store.object_key(tenant, patient, doomed)
    for object_id in kept:
        assert await store.object_key(tenant, patient, object_id) == keys[object_id]
    assert (await store.patient_key(tenant, patient)).key
    assert await store.destroy_object(tenant, patient, doomed) is None
    if backend.name == "sqlite":
        on_disk = backend.raw_bytes()
        assert doomed_row.wrapped not in on_disk and keys[doomed] not in on_disk
        assert all(r.wrapped in on_disk for r in kept_rows)


async def test_create_racing_destroy_never_leaves_a_key(store: KeyStore, tenant: str) -> None:
    for i in range(12):
        patient = f"race-{i}-{uuid.uuid4()}"
        create = store.create_patient_key(tenant, patient)
        destroy = store.destroy_patient(tenant, patient)
        pair = (create, destroy) if i % 2 else (destroy, create)
        await asyncio.gather(*pair, return_exceptions=True)
        with pytest.raises(KeyDestroyed):
            await store.patient_key(tenant, patient)


async def test_a_write_cancelled_mid_statement_leaves_the_store_writable(
    backend: Backend, store: KeyStore, tenant: str, root: RootKeyProvider
) -> None:
    """A job cancelled by its time limit inside a key-store statement (in CI, a video job)
    left SQLite's write lock with the dropped connection: every later writer failed with
    "database is locked". The cancelled task stays referenced, as a job runner keeps it."""
    patient = f"patient-{uuid.uuid4()}"
    await store.create_patient_key(tenant, patient)
    # The first SELECT of the write transaction (the DEK row, read under the lock).
    with cancel_inside(lambda conn, sql: bool(conn.get_execution_options().get("keys_write"))
                       and sql.startswith("SELECT")) as cancelled:
        write = asyncio.create_task(store.new_object_key(tenant, patient, "object-1"))
        with pytest.raises(asyncio.CancelledError):
            await write
    assert cancelled == [write]

    other = await KeyStore.open(backend.url, root, schema=backend.schema)  # another connection, another node
    try:
        await other.new_object_key(tenant, patient, "object-2")
        await other.create_patient_key(tenant, f"patient-{uuid.uuid4()}")
    finally:
        await other.close()
    # Nothing of the cancelled write was kept: the same object gets its key now.
    key = await store.new_object_key(tenant, patient, "object-1")
    assert (await store.object_key(tenant, patient, "object-1")).key_id == key.key_id


# -- rotation --------------------------------------------------------------------------


async def test_rotation_keeps_every_key_and_frees_the_old_version(
    backend: Backend, root: RootKeyProvider, store: KeyStore, tenant: str
) -> None:
    patients = dict([await make_patient(store, tenant, objects=2) for _ in range(5)])
    (old_kek,) = await rows(backend, tenant_keks, tenant_keks.c.tenant_id == tenant)

    class Interrupted(Exception):
        pass

    def crash(done: int, total: int) -> None:
        raise Interrupted  # a worker killed after the new version, before any rewrap

    with pytest.raises(Interrupted):
        await store.rotate_kek(tenant, progress=crash)
    versions = {v.version: v for v in await store.kek_versions(tenant)}
    assert (versions[1].state, versions[1].dek_count) == ("retired", 5)
    assert (versions[2].state, versions[2].dek_count) == ("active", 0)
    with pytest.raises(KeyInUse):
        await store.destroy_kek_version(tenant, 1)
    with pytest.raises(KeyInUse):
        await store.destroy_kek_version(tenant, 2)
    for patient, keys in patients.items():  # reads keep working mid-rotation
        for object_id, key in keys.items():
            assert await store.object_key(tenant, patient, object_id) == key

    seen: list[tuple[int, int]] = []
    assert await store.rewrap(tenant, progress=lambda done, total: seen.append((done, total))) == 5
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    await store.destroy_kek_version(tenant, 1)

    versions = {v.version: v for v in await store.kek_versions(tenant)}
    assert versions[1].state == "destroyed" and versions[1].destroyed_at is not None
    assert (versions[2].state, versions[2].dek_count) == ("active", 5)
    fresh = await KeyStore.open(backend.url, root, schema=backend.schema)  # cold caches
    for patient, keys in patients.items():
        assert (await fresh.patient_key(tenant, patient)).kek_version == 2
        for object_id, key in keys.items():
            assert await fresh.object_key(tenant, patient, object_id) == key
    await fresh.close()
    assert await store.rotate_kek(tenant) == 3
    (v1,) = await rows(backend, tenant_keks, tenant_keks.c.tenant_id == tenant, tenant_keks.c.version == 1)
    assert v1.wrapped is None
    if backend.name == "sqlite":
        assert old_kek.wrapped not in backend.raw_bytes()


async def test_rotation_racing_erasure_never_restores_a_key(
    backend: Backend, store: KeyStore, tenant: str
) -> None:
    for _ in range(30):
        await make_patient(store, tenant, objects=0)  # enough rows for rotation to take a while
    for i in range(10):
        victim, keys = await make_patient(store, tenant, objects=1)
        dek_id = (await store.patient_key(tenant, victim)).dek_id

        async def destroy_later(victim: str = victim, delay: float = i * 0.003) -> list[str]:
            await asyncio.sleep(delay)
            return await store.destroy_patient(tenant, victim)

        version, destroyed = await asyncio.gather(store.rotate_kek(tenant), destroy_later())
        assert version == i + 2 and destroyed[0] == dek_id
        assert await rows(backend, patient_deks, patient_deks.c.dek_id == dek_id) == []
        with pytest.raises(KeyDestroyed):
            await store.patient_key(tenant, victim)
        with pytest.raises(KeyDestroyed):
            await store.object_key(tenant, victim, next(iter(keys)))
    assert all(v.dek_count == 0 for v in await store.kek_versions(tenant) if v.state != "active")


async def test_erasure_between_rewrap_read_and_write_is_not_undone(
    backend: Backend, store: KeyStore, tenant: str
) -> None:
    """Deterministic form of the race: another node erases a patient right after this
    node's rotation has read the row and before it writes the rewrapped key."""
    patients = [(await make_patient(store, tenant, objects=0))[0] for _ in range(4)]
    victim = patients[1]
    erased: list[int] = []

    def erase_after_read(conn, cursor, statement, params, context, executemany) -> None:
        if (
            not erased
            and statement.lstrip().startswith("SELECT")
            and "ORDER BY" in statement
            and "patient_deks" in statement
        ):
            with conn.engine.begin() as other:  # another pooled connection: "another node"
                erased.append(
                    other.execute(patient_deks.delete().where(patient_deks.c.patient_id == victim)).rowcount
                )

    sa.event.listen(sa.Engine, "after_cursor_execute", erase_after_read)
    try:
        await store.rotate_kek(tenant)
    finally:
        sa.event.remove(sa.Engine, "after_cursor_execute", erase_after_read)
    assert erased == [1]
    assert await rows(backend, patient_deks, patient_deks.c.patient_id == victim) == []
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, victim)
    for patient in patients:
        if patient != victim:
            assert (await store.patient_key(tenant, patient)).kek_version == 2


# -- cache -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_is_bounded_and_expires() -> None:
    clock = Clock()
    cache = KeyCache(ttl=5.0, size=3, clock=clock)
    for i in range(4):
        cache.put(("dek", "t", f"p{i}"), bytes([i]))
    assert len(cache) == 3 and cache.get(("dek", "t", "p0")) is None  # least recently used went first
    assert cache.get(("dek", "t", "p1")) == b"\x01"
    cache.put(("dek", "t", "p4"), b"\x04")
    assert cache.get(("dek", "t", "p2")) is None and cache.get(("dek", "t", "p1")) == b"\x01"
    clock.now = 5.0
    assert cache.get(("dek", "t", "p1")) is None and cache.get(("dek", "t", "p4")) is None
    cache.put(("obj", "t", "p1", "o1"), b"k")
    cache.put(("obj", "t", "p2", "o2"), b"k")
    assert cache.evict_where(lambda k: k[2] == "p1") == 1
    assert cache.get(("obj", "t", "p2", "o2")) == b"k"
    assert len(KeyCache(ttl=0, size=10)) == 0
    disabled = KeyCache(ttl=0, size=10)
    disabled.put("k", b"v")
    assert disabled.get("k") is None


# -- backups ---------------------------------------------------------------------------


async def test_restored_backup_is_reshredded(backend: Backend, root: RootKeyProvider) -> None:
    # No other store may hold the file open: the restore copies over it.
    store = await KeyStore.open(backend.url, root, schema=backend.schema)
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    victim, keys = await make_patient(store, tenant, objects=2)
    survivor, survivor_keys = await make_patient(store, tenant, objects=1)
    (dek_row,) = await rows(backend, patient_deks, patient_deks.c.patient_id == victim)
    object_rows = await rows(backend, object_keys, object_keys.c.patient_id == victim)
    backup = await _take_backup(backend, store)
    store = await KeyStore.open(backend.url, root, schema=backend.schema)

    ledger = await store.destroy_patient(tenant, victim)  # the vault keeps these ids
    await store.purge_object_keys(tenant, victim)  # what the erasure's clean-up job does
    await store.close()
    store = await _restore_backup(backend, root, backup, [dek_row, *object_rows])
    assert (await store.patient_key(tenant, victim)).dek_id == dek_row.dek_id  # the backup brought it back

    assert await store.reshred(ledger) == 3
    with pytest.raises(KeyDestroyed):
        await store.patient_key(tenant, victim)
    for object_id in keys:
        with pytest.raises(KeyDestroyed):
            await store.object_key(tenant, victim, object_id)
    for object_id, key in survivor_keys.items():
        assert await store.object_key(tenant, survivor, object_id) == key
    assert await store.reshred(ledger) == 0
    if backend.name == "sqlite":
        on_disk = backend.raw_bytes()
        assert dek_row.wrapped not in on_disk and all(r.wrapped not in on_disk for r in object_rows)
    await store.close()


async def _take_backup(backend: Backend, store: KeyStore) -> Path | None:
    await store.close()  # the last connection folds the WAL in: a cold, consistent copy
    if backend.path is None:
        return None
    copy = backend.path.with_name("backup.db")
    shutil.copyfile(backend.path, copy)
    return copy


async def _restore_backup(
    backend: Backend, root: RootKeyProvider, backup: Path | None, lost: list
) -> KeyStore:
    if backup is not None:
        for suffix in ("-wal", "-shm"):
            backend.path.with_name(backend.path.name + suffix).unlink(missing_ok=True)
        shutil.copyfile(backup, backend.path)
    else:  # PostgreSQL: a point-in-time restore brings the deleted rows back
        engine = db.create_engine(backend.url, schema=backend.schema)
        async with engine.begin() as conn:
            for row in lost:
                table = patient_deks if "kek_version" in row._fields else object_keys
                await conn.execute(table.insert().values(**row._asdict()))
        await engine.dispose()
    return await KeyStore.open(backend.url, root, schema=backend.schema)


# -- KMS as the root of the hierarchy ----------------------------------------------------


async def test_hierarchy_over_kms(backend: Backend, moto) -> None:
    prefix = f"alias/vault-{uuid.uuid4().hex[:8]}"
    kms = open_root_key(f"aws-kms://{prefix}?region={moto.region}&endpoint_url={moto.url}", production=True)
    store = await KeyStore.open(backend.url, kms, schema=backend.schema, cache_ttl=0)
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    patient, keys = await make_patient(store, tenant, objects=1)
    await store.rotate_kek(tenant)
    await store.destroy_kek_version(tenant, 1)
    (object_id,) = keys
    assert await store.object_key(tenant, patient, object_id) == keys[object_id]
    assert await store.blind_index(tenant, "external_ref", "x") == await store.blind_index(
        tenant, "external_ref", "X"
    )
    await store.close()
    await kms.close()
