"""The leftover sweep against a real runtime (database, key store, local blob store):
a write in progress heartbeats its lease past the grace and is never touched; once its
writer is gone and the grace has passed, its key is shredded in the ledger, then its
blob deleted. Lease and grace are one second here."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import select

from keys.errors import KeyDestroyed
from tests.lifecycle.support import Api
from vault.leftovers.models import BlobWrite
from vault.leftovers.sweep import LeftoverSweep
from vault.shredding.models import ShredRecord


@pytest.fixture
def settings(settings):
    return settings.replace(blob_lease_seconds=1, leftover_grace_seconds=1, webhooks_allow_http_loopback=True)


class WatchedStore:
    """The real store; records, at each delete, whether the blob's key was already
    destroyed and recorded in the ledger (the order the sweep promises)."""

    def __init__(self, store, rt) -> None:
        self._store, self._rt, self.deletes = store, rt, []

    def __getattr__(self, name):
        return getattr(self._store, name)

    async def delete(self, key: str) -> None:
        async with self._rt.db.session() as s:
            ledger = (await s.execute(select(ShredRecord.cause).where(ShredRecord.object_id == key))).scalars().all()
        try:
            await self._rt.keys.object_key(self._rt_tenant, self._rt_patient, key)
            key_alive = True
        except KeyDestroyed:
            key_alive = False
        self.deletes.append((key, key_alive, list(ledger)))
        await self._store.delete(key)


def sweep_of(rt, store=None) -> LeftoverSweep:
    return LeftoverSweep(db=rt.db, keys=rt.keys, store=store or rt.store, ledger=rt.ledger, grace_seconds=1)


async def _slow(chunks: int, every: float):
    for i in range(chunks):
        await asyncio.sleep(every)
        yield bytes([i % 256]) * 70_000


async def test_a_live_write_is_never_swept_and_an_orphan_is_after_the_grace(client, clinic):
    api = Api(client, clinic)
    rt = api.rt
    pid = await api.patient()
    await sweep_of(rt).run()  # the database is shared: first clear other tests' expired leftovers
    write = asyncio.create_task(rt.sealed.put_stream(clinic.id, pid, _slow(chunks=40, every=0.1)))
    sweeps = []
    while not write.done():  # ~4 s: past lease + grace several times over
        await asyncio.sleep(0.4)
        for part in rt.store.root.rglob("*.part"):  # a stalled upload: its file untouched for hours
            old = part.stat().st_mtime - 7200
            os.utime(part, (old, old))
        sweeps.append((await sweep_of(rt).run()).as_dict())
    ref = await write
    assert len(sweeps) >= 5 and all(s == {"partials": 0, "blobs": 0, "keys": 0, "leases": 0} for s in sweeps), sweeps
    assert len(await rt.sealed.read(ref)) == 40 * 70_000  # whole and readable

    # Nothing references it and its task has ended: kept until lease + grace are over...
    assert (await sweep_of(rt).run()).blobs == 0
    await asyncio.sleep(2.5)
    watched = WatchedStore(rt.store, rt)
    watched._rt_tenant, watched._rt_patient = clinic.id, pid
    report = await sweep_of(rt, watched).run()
    assert report.blobs >= 1 and report.keys >= 1
    (deleted,) = [d for d in watched.deletes if d[0] == ref.id]
    assert deleted == (ref.id, False, ["leftover"])  # key shredded and in the ledger before the delete
    assert not await rt.store.exists(ref.id)
    async with rt.db.session() as s:
        assert await s.get(BlobWrite, ref.id) is None


async def test_a_committed_upload_ends_its_lease_and_is_kept(client, clinic):
    api = Api(client, clinic)
    pid = await api.patient()
    media_id = await api.photo(pid)
    async with api.rt.db.session() as s:
        assert (await s.execute(select(BlobWrite).where(BlobWrite.patient_id == pid))).first() is None
    await asyncio.sleep(2.5)
    await sweep_of(api.rt).run()
    resp, body = await api.call("GET", f"/v1/media/{media_id}/content", role="records", status=200)
    assert body[:2] == b"\xff\xd8"


async def test_an_object_key_whose_blob_never_landed_is_shredded(client, clinic):
    """A writer killed between creating the key and storing the blob: key, lease, no blob."""
    api = Api(client, clinic)
    rt = api.rt
    pid = await api.patient()
    # The writing task ends right after the key exists (as a killed writer's would).
    ref, _key = await asyncio.create_task(rt.sealed._new(clinic.id, pid, 0))
    await asyncio.sleep(0.1)
    assert (await sweep_of(rt).run()).keys == 0  # its lease is live
    await asyncio.sleep(3.5)
    report = await sweep_of(rt).run()
    assert report.keys >= 1
    with pytest.raises(KeyDestroyed):
        await rt.keys.object_key(clinic.id, pid, ref.id)
    async with rt.db.session() as s:
        assert (await s.execute(select(ShredRecord.cause).where(ShredRecord.object_id == ref.id))).scalar_one() == "leftover"
