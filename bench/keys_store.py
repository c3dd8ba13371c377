"""Key store costs, as ratios against a bare indexed SELECT measured in the same run.

    .venv/bin/python bench/keys_store.py [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/test]

- key reads: every patient_key / object_key reads its row (the existence check); the
  cache only saves unwrapping. Warm and cold (cache off) against the bare SELECT.
- erasure: destroy_patient with 10 vs 2000 objects (DESIGN invariant 2: the time must not
  grow with the number of photos), including the WAL checkpoint / VACUUM.
- rotation: rewrap throughput (DEKs per second).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keys import db
from keys.migrate import upgrade
from keys.models import object_keys, patient_deks
from keys.providers import open_root_key
from keys.store import KeyStore


async def interleaved_medians(
    fns: dict[str, Callable[[], Awaitable[object]]], *, rounds: int
) -> dict[str, float]:
    """Round-robin over the variants so a noisy neighbour slows all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(rounds + 20):
        for name, fn in fns.items():
            start = time.perf_counter()
            await fn()
            if round_ >= 20:  # warm-up
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


async def fill_objects(url: str, schema: str, tenant: str, patient: str, dek_id: str, count: int) -> None:
    """Bulk rows stand in for object keys: erasure cost depends on rows, not on how they were made."""
    engine = db.create_engine(url, schema=schema)
    created = datetime.now(UTC)
    async with engine.begin() as conn:
        await conn.execute(
            object_keys.insert(),
            [
                {
                    "key_id": str(uuid.uuid4()),
                    "tenant_id": tenant,
                    "patient_id": patient,
                    "object_id": str(uuid.uuid4()),
                    "dek_id": dek_id,
                    "wrapped": bytes(61),
                    "created_at": created,
                }
                for _ in range(count)
            ],
        )
    await engine.dispose()


async def run(url: str, schema: str, workdir: Path) -> dict[str, float]:
    await upgrade(url, schema=schema)
    root = open_root_key(f"file://{workdir}/root.key", production=False)
    warm = await KeyStore.open(url, root, schema=schema)
    cold = await KeyStore.open(url, root, schema=schema, cache_ttl=0)
    tenant = f"bench-{uuid.uuid4()}"
    await warm.ensure_tenant(tenant)
    patient, object_id = "p-read", "o-read"
    await warm.create_patient_key(tenant, patient)
    await warm.new_object_key(tenant, patient, object_id)

    bare = db.create_engine(url, schema=schema)
    query = sa.select(patient_deks.c.wrapped).where(
        patient_deks.c.tenant_id == tenant, patient_deks.c.patient_id == patient
    )

    async def bare_select() -> None:
        async with bare.connect() as conn:
            await conn.scalar(query)

    out = await interleaved_medians(
        {
            "bare SELECT (baseline)": bare_select,
            "patient_key warm": lambda: warm.patient_key(tenant, patient),
            "patient_key cold": lambda: cold.patient_key(tenant, patient),
            "object_key warm": lambda: warm.object_key(tenant, patient, object_id),
            "object_key cold": lambda: cold.object_key(tenant, patient, object_id),
        },
        rounds=300,
    )
    await bare.dispose()

    erasures: dict[int, list[float]] = {10: [], 2000: []}
    for i in range(5):
        for objects, samples in erasures.items():  # alternate sizes, same noise for both
            victim = f"p-erase-{objects}-{i}"
            dek_id = await warm.create_patient_key(tenant, victim)
            await fill_objects(url, schema, tenant, victim, dek_id, objects)
            start = time.perf_counter()
            destroyed = await warm.destroy_patient(tenant, victim)
            samples.append(time.perf_counter() - start)
            assert len(destroyed) == objects + 1
    for objects, samples in erasures.items():
        out[f"destroy_patient {objects} objects"] = statistics.median(samples) * 1e6

    for i in range(1000):
        await warm.create_patient_key(tenant, f"p-rot-{i}")
    start = time.perf_counter()
    await warm.rotate_kek(tenant)
    out["rotate_kek DEKs/s"] = 1002 / (time.perf_counter() - start)
    await warm.close()
    await cold.close()
    return out


def report(name: str, r: dict[str, float]) -> None:
    base = r["bare SELECT (baseline)"]
    print(f"\n{name}")
    for key in (
        "bare SELECT (baseline)",
        "patient_key warm",
        "patient_key cold",
        "object_key warm",
        "object_key cold",
    ):
        print(f"  {key:<28} {r[key]:9.0f} us   x{r[key] / base:.2f} of bare SELECT")
    small, big = r["destroy_patient 10 objects"], r["destroy_patient 2000 objects"]
    print(f"  {'destroy_patient 10 objects':<28} {small / 1000:9.2f} ms")
    print(f"  {'destroy_patient 2000 objects':<28} {big / 1000:9.2f} ms   x{big / small:.2f} of 10 objects")
    print(f"  {'rotate_kek (1002 DEKs)':<28} {r['rotate_kek DEKs/s']:9.0f} DEKs/s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pg", help="also run against this PostgreSQL URL (a temporary schema)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the dev root key's warning is expected here
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        report(
            "SQLite (aiosqlite, WAL, secure_delete)",
            await run(f"sqlite+aiosqlite:///{tmp}/keys.db", "keystore", workdir),
        )
        if args.pg:
            schema = f"keys_bench_{uuid.uuid4().hex[:8]}"
            try:
                report("PostgreSQL (asyncpg)", await run(args.pg, schema, workdir))
            finally:
                engine = db.create_engine(args.pg, schema=schema)
                async with engine.begin() as conn:
                    await conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
