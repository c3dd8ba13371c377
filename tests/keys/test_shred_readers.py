"""An erasure is not held up by a reader holding a key-store snapshot (a backup, a long
report): the key row is gone for everyone at once, the call returns in bounded time,
and the WAL checkpoint that removes the old page images completes once the reader has
gone, through the periodic ``shred.checkpoint`` job.

Before: ``wal_checkpoint(TRUNCATE)`` waited on the busy handler (15 s) for the reader,
holding the write lock, up to 40 times.

A statement of our own cancelled mid-step (a job's time limit, a request given up) is not
such a reader: it must not hold a snapshot until the garbage collector finds its cursor.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

from keys.errors import KeyDestroyed
from keys.migrate import upgrade
from keys.providers import open_root_key
from keys.store import KeyStore
from tests.support.cancel import cancel_inside
from tests.support.sqlite_holders import holders
from workers.jobs.keys import finish_shreds as checkpoint_job

BOUND = 2.0  # seconds an erasure may take with a reader holding a snapshot


def files(path: Path) -> dict[str, bytes]:
    """Every file SQLite keeps for the database: main, WAL, shared memory."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        f = path.with_name(path.name + suffix)
        if f.exists():
            out[f.name] = f.read_bytes()
    return out


class _NoMetadata:
    """The job also checkpoints the metadata database; this test has only a key store."""

    async def checkpoint(self) -> bool:
        return True


@pytest.fixture
async def store(tmp_path: Path):
    path = tmp_path / "keys.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    root = open_root_key(f"file://{tmp_path}/keyring", production=False)
    opened = await KeyStore.open(url, root)
    opened.path = path
    yield opened
    await opened.close()
    await root.close()


async def test_erasure_returns_at_once_while_a_reader_holds_a_snapshot(store):
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    patient, other = str(uuid.uuid4()), str(uuid.uuid4())
    dek_id = await store.create_patient_key(tenant, patient)
    for _ in range(3):
        await store.new_object_key(tenant, patient, str(uuid.uuid4()))
    assert await store.finish_shreds()  # everything in the main file, WAL empty

    reader = sqlite3.connect(store.path, isolation_level=None)
    try:
        wrapped = reader.execute("SELECT wrapped FROM patient_deks WHERE patient_id = ?", (patient,)).fetchone()[0]
        # The backup-style reader: an open read transaction pins the snapshot.
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM patient_deks").fetchone()[0] == 1

        started = time.monotonic()
        assert await store.destroy_patient(tenant, patient) == [dek_id]
        erased_in = time.monotonic() - started
        assert erased_in < BOUND, erased_in

        # Other writers do not queue behind a waiting checkpoint either.
        started = time.monotonic()
        await asyncio.wait_for(store.create_patient_key(tenant, other), BOUND)
        assert time.monotonic() - started < BOUND

        # The key row is gone for every node at once (a fresh connection, the store).
        fresh = sqlite3.connect(store.path)
        try:
            assert fresh.execute("SELECT count(*) FROM patient_deks WHERE patient_id = ?", (patient,)).fetchone()[0] == 0
        finally:
            fresh.close()
        with pytest.raises(KeyDestroyed):
            await store.patient_key(tenant, patient)

        # What the reader still sees is the old page, which is why the clean-up is pending.
        assert reader.execute("SELECT count(*) FROM patient_deks WHERE patient_id = ?", (patient,)).fetchone()[0] == 1
        assert any(wrapped in data for data in files(store.path).values())
        ctx = SimpleNamespace(runtime=SimpleNamespace(keys=store, db=_NoMetadata()), job_id="test")
        started = time.monotonic()
        await checkpoint_job(ctx, {})  # the job does not wait on the reader either
        assert time.monotonic() - started < BOUND
        assert any(wrapped in data for data in files(store.path).values())
    finally:
        reader.execute("ROLLBACK") if reader.in_transaction else None
        reader.close()

    # The reader has gone: the next run of the job completes the checkpoint.
    await checkpoint_job(ctx, {})
    on_disk = files(store.path)
    assert all(wrapped not in data for data in on_disk.values()), sorted(on_disk)
    wal = store.path.with_name(store.path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert await store.finish_shreds()
    assert (await store.patient_key(tenant, other)).dek_id  # the other patient is untouched


async def test_checkpoint_restores_the_busy_timeout_of_pooled_connections(store):
    await store.finish_shreds()
    async with store._engine.connect() as conn:  # the pool hands back the same connection
        raw = await conn.get_raw_connection()
        cursor = await raw.driver_connection.execute("PRAGMA busy_timeout")
        assert (await cursor.fetchone())[0] == 15000


@pytest.mark.parametrize("option", ["keys_read", "keys_write"])
async def test_a_statement_cancelled_mid_step_leaves_no_snapshot_behind(store, option):
    """A job's time limit cancelling a key-store statement (a read of the KEK versions, or
    the DEK-row SELECT that opens an object-key write, as a video job's was in CI) used to
    leave the statement's cursor open: SQLAlchemy invalidates a cancelled connection
    without closing the cursor, the driver's thread still runs the step, and SQLite keeps
    the closed connection as a "zombie" with that read snapshot (a ROLLBACK ends the
    transaction, not a pending read) until the cursor is garbage-collected. Meanwhile the
    checkpoint after an erasure could not complete and the erased DEK stayed in the WAL
    (tests/shredding/test_reshred.py in full CI runs, where full collections are rare).
    Collections are off here, and the cancelled task stays referenced, as a job runner
    keeps it: only closing the cursor at the cancellation releases the snapshot."""
    tenant = f"clinic-{uuid.uuid4()}"
    await store.ensure_tenant(tenant)
    patient = str(uuid.uuid4())
    dek_id = await store.create_patient_key(tenant, patient)
    assert await store.finish_shreds()
    with closing(sqlite3.connect(store.path)) as conn:
        wrapped = conn.execute("SELECT wrapped FROM patient_deks WHERE patient_id = ?", (patient,)).fetchone()[0]

    operation = store.kek_versions(tenant) if option == "keys_read" else store.new_object_key(tenant, patient, "object-1")
    gc.disable()
    try:
        with cancel_inside(lambda conn, sql: bool(conn.get_execution_options().get(option))
                           and sql.lstrip().startswith("SELECT")) as cancelled:
            task = asyncio.create_task(operation)
            with pytest.raises(asyncio.CancelledError):
                await task
        assert cancelled == [task]
        assert holders(store.path) == []

        assert await store.destroy_patient(tenant, patient) == [dek_id]
        # The erasure's own checkpoint completed: nothing is left for the periodic job.
        on_disk = files(store.path)
        assert all(wrapped not in data for data in on_disk.values()), sorted(on_disk)
        assert await store.finish_shreds()
    finally:
        gc.enable()
