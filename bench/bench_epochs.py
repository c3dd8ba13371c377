"""Root-key epochs (issue 14): provider wrap/unwrap latency, KEK rotation throughput, and
key-store erasure latency for 10 vs 10,000 photos, medians, in one run.

    .venv/bin/python bench/bench_epochs.py [--rounds 200] [--erasure-rounds 3]

The baseline for provider latency is an in-process AES-GCM wrap of the same 32 bytes
(what the ``file:`` keyring adds is the AAD JSON and the version lookup); KMS runs on
moto's server over loopback HTTP (a protocol cost, not AWS's latency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

import sqlalchemy as sa  # noqa: E402

from keys.db import WAL_AUTOCHECKPOINT_PAGES  # noqa: E402
from keys.migrate import upgrade  # noqa: E402
from keys.providers import open_root_key  # noqa: E402
from keys.store import KeyStore  # noqa: E402

CONTEXT = {"purpose": "tenant-kek", "tenant": "bench", "kek_version": "1"}


async def median_ms(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def provider_latency(provider, rounds: int) -> tuple[float, float]:
    version = f"bench.t.kek-1.{secrets.token_hex(4)}"
    await provider.create_version(version)
    blob = await provider.wrap(version, b"k" * 32, CONTEXT)
    wrap = await median_ms(lambda: provider.wrap(version, b"k" * 32, CONTEXT), rounds)
    unwrap = await median_ms(lambda: provider.unwrap(version, blob, CONTEXT), rounds)
    return wrap, unwrap


async def main(rounds: int, erasure_rounds: int = 3) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-epochs-"))
    aead = AESGCM(AESGCM.generate_key(256))

    async def bare() -> bytes:
        nonce = os.urandom(12)
        return aead.encrypt(nonce, b"k" * 32, b"ctx")

    baseline = await median_ms(bare, rounds)
    print(f"baseline in-process AES-GCM wrap: {baseline * 1000:.1f} µs")
    ring = open_root_key((work / "keyring").as_uri(), production=False)
    w, u = await provider_latency(ring, rounds)
    print(f"file keyring: wrap {w * 1000:.1f} µs ({w / baseline:.1f}×), unwrap {u * 1000:.1f} µs ({u / baseline:.1f}×)")

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from tests.support.moto import moto_server

    with moto_server() as moto:
        kms = open_root_key(f"aws-kms://alias/bench?region={moto.region}&endpoint_url={moto.url}", production=True)
        w, u = await provider_latency(kms, max(20, rounds // 4))
        print(f"aws-kms on moto: wrap {w:.2f} ms ({w / baseline:.0f}×), unwrap {u:.2f} ms ({u / baseline:.0f}×)")
        await kms.close()

    url = f"sqlite+aiosqlite:///{work / 'keys.db'}"
    await upgrade(url)
    store = await KeyStore.open(url, ring, cache_ttl=0)
    tenant = "bench"
    await store.ensure_tenant(tenant)
    patients = 5000
    for _ in range(patients):
        await store.create_patient_key(tenant, str(uuid.uuid4()))
    start = time.perf_counter()
    await store.rotate_kek(tenant)
    elapsed = time.perf_counter() - start
    print(f"KEK rotation (new epoch + rewrap): {patients} DEKs in {elapsed:.2f} s = {patients / elapsed:.0f} DEKs/s")

    await store.close()

    # Erasure, 10 vs 10,000 photos, right after the photos' object keys were written (one
    # transaction each, as uploads do): the key store's WAL autocheckpoint as it was
    # (SQLite's 1000 pages) and as it is now (keys/db.py), in the same run, rounds alternating.
    results = {}
    for pages in (1000, WAL_AUTOCHECKPOINT_PAGES) if erasure_rounds else ():  # --erasure-rounds 0: skip
        results[pages] = await erasure_ratio(work, ring, pages, rounds=erasure_rounds)
    for pages, (small, large, h_small, h_large) in results.items():
        label = "before (autocheckpoint 1000)" if pages == 1000 else f"now (autocheckpoint {pages})"
        print(f"erasure (destroy_patient, SQLite) {label}: 10 photos {small:.1f} ms, 10,000 photos {large:.1f} ms, "
              f"ratio {large / small:.2f}; of which the closing checkpoint {h_small:.1f} ms vs {h_large:.1f} ms")

    # The new hot paths: seal_field (one more SELECT: a pending DEK) and a lookup's
    # blind_indexes (every live epoch) against blind_index (the current one).
    url = f"sqlite+aiosqlite:///{work / 'hot.db'}"
    await upgrade(url)
    store = await KeyStore.open(url, ring)
    await store.ensure_tenant(tenant)
    await store.rotate_kek(tenant)
    patient = str(uuid.uuid4())
    await store.create_patient_key(tenant, patient)
    key = await store.patient_key(tenant, patient)

    async def seal_baseline():
        await store.patient_key(tenant, patient)
        AESGCM(key.key).encrypt(b"0" * 12, b"value", b"aad")

    async def seal():
        await store.seal_field(tenant, patient, table="t", column="c", row_id="r", value="value")

    base = await median_ms(seal_baseline, rounds)
    sealed = await median_ms(seal, rounds)
    one = await median_ms(lambda: store.blind_index(tenant, "p", "MRN-1"), rounds)
    every = await median_ms(lambda: store.blind_indexes(tenant, "p", "MRN-1"), rounds)
    print(f"seal_field {sealed * 1000:.0f} µs vs patient_key + AES-GCM {base * 1000:.0f} µs ({sealed / base:.2f}×); "
          f"blind_indexes (2 live epochs) {every * 1000:.0f} µs vs blind_index {one * 1000:.0f} µs ({every / one:.2f}×)")


async def erasure_ratio(work: Path, ring, pages: int, *, rounds: int) -> tuple[float, float, float, float]:
    """Median ms of destroy_patient (and of its closing checkpoint) for 10 and 10,000 photos."""
    url = f"sqlite+aiosqlite:///{work / f'erase-{pages}.db'}"
    await upgrade(url)
    store = await KeyStore.open(url, ring, cache_ttl=0)

    @sa.event.listens_for(store._engine.sync_engine, "connect")
    def _pages(dbapi, record):  # after keys/db.py's PRAGMAs: this variant's setting wins
        cursor = dbapi.cursor()
        cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")
        cursor.close()

    await store.ensure_tenant("bench")
    spent: dict[str, float] = {}
    harden = store._harden

    async def timed_harden(*tables):
        start = time.perf_counter()
        await harden(*tables)
        spent["harden"] = (time.perf_counter() - start) * 1000

    store._harden = timed_harden  # type: ignore[method-assign]
    totals: dict[int, list[float]] = {10: [], 10_000: []}
    hardens: dict[int, list[float]] = {10: [], 10_000: []}
    for _ in range(rounds):
        for count in totals:
            patient = str(uuid.uuid4())
            await store.create_patient_key("bench", patient)
            for _ in range(count):
                await store.new_object_key("bench", patient, str(uuid.uuid4()))
            start = time.perf_counter()
            await store.destroy_patient("bench", patient)
            totals[count].append((time.perf_counter() - start) * 1000)
            hardens[count].append(spent["harden"])
    await store.close()
    med = statistics.median
    return med(totals[10]), med(totals[10_000]), med(hardens[10]), med(hardens[10_000])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--erasure-rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.erasure_rounds))
