"""Erasure latency against the number of photos, and the blob clean-up rate.

    .venv/bin/python bench/bench_erasure.py [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--rounds 3]

- erasure: ``ErasureService.erase`` (intent + tombstone, shred, receipt + clean-up job)
  for a patient with 10 photos and one with 10,000 photos (30,000 renditions, so 30,000
  object keys), sizes alternating in the same run; rows and object keys are inserted in
  bulk (erasure cost depends on rows, not on how they were made). Reported: the whole
  call and its parts — the shred (key store + shred ledger) and the rest — with the
  10,000/10 ratio of each.
  The shred deletes only the DEK row (the object keys it wrapped die with it); the
  clean-up job removes the dead object-key rows in bulk later.
- clean-up: the ``lifecycle.purge_patient`` work (``Purger``) deleting N real blobs
  from the local store, against a bare ``os.unlink`` loop over as many files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keys import db as keys_db  # noqa: E402
from keys.migrate import upgrade as upgrade_keys  # noqa: E402
from keys.models import object_keys  # noqa: E402
from vault.actor import Actor  # noqa: E402
from vault.config import Settings  # noqa: E402
from vault.db import new_id  # noqa: E402
from vault.media.models import Media, MediaBlob  # noqa: E402
from vault.migrate import upgrade  # noqa: E402
from vault.runtime import runtime  # noqa: E402

RENDITIONS = ("original", "thumb256", "thumb1024")
_CHUNK = 2000


async def fill(rt, keystore, tenant_id: str, patient_id: str, photos: int) -> None:
    """``photos`` media rows, three blob rows and three object keys each, in bulk."""
    dek_id = (await rt.keys.patient_key(tenant_id, patient_id)).dek_id
    now = datetime.now(UTC)
    media, blobs, keys = [], [], []
    for _ in range(photos):
        mid = new_id()
        media.append(dict(id=mid, tenant_id=tenant_id, patient_id=patient_id, kind="photo", status="ready", phase="after",
                          mime="image/jpeg", width=4000, height=3000, created_by="bench", created_at=now, updated_at=now,
                          faces_detected=False, faces_count=0, faces_boxes="[]", faces_assumed=False, face_detector="bench"))
        for rendition in RENDITIONS:
            bid = new_id()
            blobs.append(dict(id=bid, media_id=mid, tenant_id=tenant_id, patient_id=patient_id, rendition=rendition,
                              mime="image/jpeg", plain_size=1000, created_at=now))
            keys.append(dict(key_id=str(uuid.uuid4()), tenant_id=tenant_id, patient_id=patient_id, object_id=bid,
                             dek_id=dek_id, wrapped=os.urandom(61), created_at=now))
    async with rt.db.transaction() as session:
        for table, rows in ((Media.__table__, media), (MediaBlob.__table__, blobs)):
            for i in range(0, len(rows), _CHUNK):
                await session.execute(table.insert(), rows[i:i + _CHUNK])
    async with keystore.begin() as conn:
        for i in range(0, len(keys), _CHUNK):
            await conn.execute(object_keys.insert(), keys[i:i + _CHUNK])


async def measure_erasures(rt, keystore, actor: Actor, sizes: tuple[int, ...], rounds: int) -> dict:
    original = rt.ledger.shred_patient
    spent: dict[str, float] = {}

    async def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await inner(*args, **kwargs)
        finally:
            spent["shred"] = time.perf_counter() - start

    inner = original
    rt.ledger.shred_patient = timed
    samples = {size: {"total": [], "shred": []} for size in sizes}
    try:
        for _ in range(rounds):
            for size in sizes:  # alternate sizes: the same noise hits both
                patient = await rt.patients.create(actor, external_ref=f"bench-{uuid.uuid4()}")
                await fill(rt, keystore, actor.tenant_id, patient.id, size)
                start = time.perf_counter()
                signed = await rt.lifecycle.erasure.erase(actor, patient.id, reason="benchmark")
                samples[size]["total"].append(time.perf_counter() - start)
                samples[size]["shred"].append(spent["shred"])
                assert signed.receipt["object_count"] == 3 * size
    finally:
        rt.ledger.shred_patient = original
    return {size: {k: statistics.median(v) for k, v in parts.items()} for size, parts in samples.items()}


async def measure_cleanup(rt, actor: Actor, blobs: int, workdir: Path) -> tuple[float, float]:
    """(purge seconds, bare unlink seconds) for ``blobs`` real files each."""
    patient = await rt.patients.create(actor, external_ref=f"bench-{uuid.uuid4()}")
    ids = []
    gate = asyncio.Semaphore(16)

    async def put(i: int) -> None:
        async with gate:
            ref = await rt.sealed.put_bytes(actor.tenant_id, patient.id, os.urandom(2048))
            ids.append((i, ref))

    await asyncio.gather(*(put(i) for i in range(blobs)))
    async with rt.db.transaction() as session:
        media_id = new_id()
        now = datetime.now(UTC)
        await session.execute(Media.__table__.insert(), [dict(
            id=media_id, tenant_id=actor.tenant_id, patient_id=patient.id, kind="photo", status="ready", phase="after",
            mime="image/jpeg", created_by="bench", created_at=now, updated_at=now)])
        await session.execute(MediaBlob.__table__.insert(), [dict(
            id=ref.id, media_id=media_id, tenant_id=actor.tenant_id, patient_id=patient.id, rendition=f"r{i}",
            mime="image/jpeg", plain_size=ref.plain_size, created_at=now) for i, ref in ids])
    await rt.lifecycle.erasure.erase(actor, patient.id, reason="benchmark")

    async def finish(session) -> None:  # the job's fenced completion; no job row here
        return None

    start = time.perf_counter()
    deleted = await rt.lifecycle.purger.purge_patient(actor.tenant_id, patient.id, erasure_id="bench", finish=finish)
    purge = time.perf_counter() - start
    assert deleted == blobs and not await rt.store.exists(ids[0][1].id)

    folder = workdir / "unlink"
    folder.mkdir()
    for i in range(blobs):
        (folder / f"{i:08d}").write_bytes(os.urandom(2048))

    def unlink_all() -> None:
        for i in range(blobs):
            os.unlink(folder / f"{i:08d}")

    start = time.perf_counter()
    await asyncio.to_thread(unlink_all)
    return purge, time.perf_counter() - start


async def run(database_url: str, keystore_url: str, workdir: Path, *, rounds: int, blobs: int) -> None:
    settings = Settings(data_dir=workdir, database_url=database_url, keystore_url=keystore_url,
                        storage_url=(workdir / "blobs").as_uri(), root_key_url=(workdir / "root.key").as_uri(),
                        inprocess_jobs=False)
    await asyncio.to_thread(upgrade, database_url)
    await upgrade_keys(keystore_url)
    keystore = keys_db.create_engine(keystore_url)
    async with runtime(settings) as rt:
        tenant = await rt.tenants.create_tenant(f"bench-{uuid.uuid4().hex[:8]}", request_id="bench")
        actor = Actor(tenant_id=tenant.id, token_id="bench", role="erasure", request_id="bench")
        sizes = (10, 10_000)
        now = await measure_erasures(rt, keystore, actor, sizes, rounds)
        purge, unlink = await measure_cleanup(rt, actor, blobs, workdir)
    await keystore.dispose()

    print(f"  erasure, medians of {rounds} (sizes alternating):")
    print(f"  {'variant':<34}{'10 photos':>12}{'10,000 photos':>16}{'ratio':>8}")
    for name, result in (("erase, as wired", now), ("  of which shred (keys + ledger)", now),
                         ("  of which the rest", now)):
        if "shred (keys" in name:
            small, big = result[10]["shred"], result[10_000]["shred"]
        elif "the rest" in name:
            small, big = result[10]["total"] - result[10]["shred"], result[10_000]["total"] - result[10_000]["shred"]
        else:
            small, big = result[10]["total"], result[10_000]["total"]
        print(f"  {name:<34}{small * 1000:>10.1f}ms{big * 1000:>14.1f}ms{big / small:>8.2f}")
    print(f"  clean-up of {blobs} blobs (local store): {purge * 1000:.0f} ms = {blobs / purge:.0f} blobs/s; "
          f"bare os.unlink loop {unlink * 1000:.0f} ms = {blobs / unlink:.0f} files/s; ratio {purge / unlink:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", help="also run against this PostgreSQL server (in a temporary database)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blobs", type=int, default=3000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the dev root key's warning is expected here
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite (WAL, secure_delete), local blob store")
        url = f"sqlite+aiosqlite:///{tmp}/vault.db"
        await run(url, f"sqlite+aiosqlite:///{tmp}/keys.db", Path(tmp), rounds=args.rounds, blobs=args.blobs)
    if args.pg:
        with tempfile.TemporaryDirectory() as tmp:
            print("PostgreSQL (asyncpg), local blob store")
            name = f"vault_bench_{uuid.uuid4().hex[:8]}"
            await _admin(args.pg, f'CREATE DATABASE "{name}"')
            try:
                url = sa.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
                await run(url, url, Path(tmp), rounds=args.rounds, blobs=args.blobs)
            finally:
                await _admin(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(url: str, sql: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
