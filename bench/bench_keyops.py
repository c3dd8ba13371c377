"""Costs of the vault side of shredding, checkpoints and KEK rotation, each against a
baseline measured in the same run (SQLite files in a temporary folder).

    .venv/bin/python bench/bench_keyops.py [--deks 1000] [--entries 20000] [--rounds 30]

- shred: ``ShredLedger.shred_patient`` (key store, then one ledger row) against a bare
  ``KeyStore.destroy_patient`` of a twin patient (3 object keys each), alternating.
- audit verify: ``Checkpoints.verify`` (chain + one checkpoint per 100 entries) against
  ``AuditLog.verify`` (chain only) over the same chain.
- rotation: ``KeyStore.rotate_kek`` rewrapping N DEKs against a bare loop doing only the
  crypto of it (AES-GCM open + seal of N wrapped keys, same AAD).
- reshred: ``ShredLedger.reshred`` of N recorded DEKs brought back by a "restore" against
  ``KeyStore.reshred`` of a twin set of N ids passed directly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keys import aead  # noqa: E402
from keys import db as keys_db  # noqa: E402
from keys.migrate import upgrade as upgrade_keys  # noqa: E402
from keys.models import patient_deks  # noqa: E402
from vault.actor import Actor  # noqa: E402
from vault.audit.checkpoints import Checkpoints  # noqa: E402
from vault.audit.service import AuditEvent  # noqa: E402
from vault.config import Settings  # noqa: E402
from vault.db import new_id  # noqa: E402
from vault.migrate import upgrade  # noqa: E402
from vault.runtime import runtime  # noqa: E402
from vault.shredding.models import ShredRecord  # noqa: E402

_CHUNK = 2000


def _settings(folder: Path) -> Settings:
    return Settings(
        data_dir=folder,
        database_url=f"sqlite+aiosqlite:///{folder / 'vault.sqlite3'}",
        keystore_url=f"sqlite+aiosqlite:///{folder / 'keys.sqlite3'}",
        storage_url=(folder / "blobs").as_uri(),
        root_key_url=(folder / "root.key").as_uri(),
        inprocess_jobs=False,
    )


async def _bulk_deks(rt, keystore, tenant_id: str, n: int) -> list[tuple[str, str]]:
    """n patient DEKs wrapped under the tenant's current KEK, inserted in bulk; (patient, dek_id)."""
    version = (await rt.keys.kek_versions(tenant_id))[-1].version
    kek = await rt.keys._kek(tenant_id, version)  # bench only: build real wrapped rows fast
    now = datetime.now(UTC)
    rows, made = [], []
    for _ in range(n):
        patient_id, dek_id = new_id(), str(uuid.uuid4())
        wrapped = aead.seal(kek, secrets.token_bytes(32), aead.aad(aead.LABEL_DEK, tenant_id, patient_id, dek_id, version))
        rows.append(dict(tenant_id=tenant_id, patient_id=patient_id, dek_id=dek_id, kek_version=version,
                         wrapped=wrapped, created_at=now))
        made.append((patient_id, dek_id))
    async with keystore.begin() as conn:
        for i in range(0, len(rows), _CHUNK):
            await conn.execute(patient_deks.insert(), rows[i:i + _CHUNK])
    return made


async def bench_shred(rt, tenant_id: str, rounds: int) -> tuple[float, float]:
    ledger, bare = [], []
    for _ in range(rounds):
        pair = []
        for _twin in range(2):
            patient_id = new_id()
            await rt.keys.create_patient_key(tenant_id, patient_id)
            for _obj in range(3):
                await rt.keys.new_object_key(tenant_id, patient_id, new_id())
            pair.append(patient_id)
        start = time.perf_counter()
        await rt.ledger.shred_patient(tenant_id, pair[0], cause="erasure")
        ledger.append(time.perf_counter() - start)
        start = time.perf_counter()
        await rt.keys.destroy_patient(tenant_id, pair[1])
        bare.append(time.perf_counter() - start)
    return statistics.median(ledger), statistics.median(bare)


async def bench_verify(rt, tenant_id: str, entries: int) -> tuple[float, float, int]:
    actor = Actor.cli(tenant_id, "bench")
    checkpoints = Checkpoints(rt.db, rt.audit, rt.keys)
    made = 0
    while made < entries:
        batch = min(100, entries - made)
        async with rt.db.transaction() as session:
            await rt.audit.append(session, *(AuditEvent.of(actor, "bench.read", patient_id=new_id()) for _ in range(batch)))
        made += batch
        await checkpoints.checkpoint(tenant_id)
    signed = len(await checkpoints.for_tenant(tenant_id))
    chain, both = [], []
    for _ in range(3):
        start = time.perf_counter()
        assert (await rt.audit.verify(tenant_id)).ok
        chain.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert (await checkpoints.verify(tenant_id)).ok
        both.append(time.perf_counter() - start)
    return statistics.median(both), statistics.median(chain), signed


async def bench_rotation(rt, keystore, tenant_id: str, n: int) -> tuple[float, float]:
    await _bulk_deks(rt, keystore, tenant_id, n)
    start = time.perf_counter()
    await rt.keys.rotate_kek(tenant_id)
    rotate = time.perf_counter() - start
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    wrapped = [(new_id(), str(uuid.uuid4())) for _ in range(n)]
    sealed = [aead.seal(old, secrets.token_bytes(32), aead.aad(aead.LABEL_DEK, tenant_id, p, d, 1)) for p, d in wrapped]
    start = time.perf_counter()
    for (p, d), blob in zip(wrapped, sealed, strict=True):
        dek = aead.open_sealed(old, blob, aead.aad(aead.LABEL_DEK, tenant_id, p, d, 1))
        aead.seal(new, dek, aead.aad(aead.LABEL_DEK, tenant_id, p, d, 2))
    return rotate, time.perf_counter() - start


async def bench_reshred(rt, keystore, tenant_id: str, n: int) -> tuple[float, float]:
    recorded = await _bulk_deks(rt, keystore, tenant_id, n)
    direct = await _bulk_deks(rt, keystore, tenant_id, n)
    now = datetime.now(UTC)
    async with rt.db.transaction() as session:
        await session.execute(ShredRecord.__table__.insert(), [
            dict(id=new_id(), key_id=dek_id, kind="patient_dek", tenant_id=tenant_id, patient_id=patient_id,
                 object_id=None, destroyed_at=now, cause="erasure") for patient_id, dek_id in recorded
        ])
    start = time.perf_counter()
    removed = await rt.ledger.reshred(tenant_id=tenant_id)
    ledger = time.perf_counter() - start
    assert removed[tenant_id] >= n
    start = time.perf_counter()
    assert await rt.keys.reshred([dek_id for _, dek_id in direct]) == n
    return ledger, time.perf_counter() - start


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        settings = _settings(folder)
        await asyncio.to_thread(upgrade, settings.database_url)
        await upgrade_keys(settings.keystore_url)
        keystore = keys_db.create_engine(settings.keystore_url)
        async with runtime(settings, group_commit=False) as rt:
            tenants = [(await rt.tenants.create_tenant(f"bench-{i}", request_id="bench")).id for i in range(4)]
            shred, bare = await bench_shred(rt, tenants[0], args.rounds)
            print(f"shred_patient (ledger)      median {shred * 1e3:7.2f} ms   bare destroy_patient {bare * 1e3:7.2f} ms"
                  f"   ratio {shred / bare:5.2f}x")
            both, chain, signed = await bench_verify(rt, tenants[1], args.entries)
            print(f"verify {args.entries} entries + {signed} checkpoints  {both * 1e3:7.1f} ms   chain only {chain * 1e3:7.1f} ms"
                  f"   ratio {both / chain:5.2f}x")
            rotate, crypto = await bench_rotation(rt, keystore, tenants[2], args.deks)
            print(f"rotate_kek, {args.deks} DEKs         {rotate * 1e3:7.1f} ms ({args.deks / rotate:8.0f} DEK/s)"
                  f"   bare crypto loop {crypto * 1e3:6.1f} ms   ratio {rotate / crypto:5.1f}x")
            ledger, direct = await bench_reshred(rt, keystore, tenants[3], args.deks)
            print(f"reshred {args.deks} DEKs (ledger)     {ledger * 1e3:7.1f} ms   KeyStore.reshred direct {direct * 1e3:7.1f} ms"
                  f"   ratio {ledger / direct:5.2f}x")
        await keystore.dispose()


if __name__ == "__main__":
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deks", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(main(parser.parse_args()))
