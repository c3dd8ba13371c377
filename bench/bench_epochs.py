"""Root-key epochs (issue 14): provider wrap/unwrap latency, KEK rotation throughput, and
key-store erasure latency for 10 vs 10,000 photos, medians, in one run.

    .venv/bin/python bench/bench_epochs.py [--rounds 200]

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


async def main(rounds: int) -> None:
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

    timings: dict[int, list[float]] = {10: [], 10_000: []}
    for _ in range(3):
        for count in timings:
            patient = str(uuid.uuid4())
            await store.create_patient_key(tenant, patient)
            for _ in range(count):
                await store.new_object_key(tenant, patient, str(uuid.uuid4()))
            start = time.perf_counter()
            await store.destroy_patient(tenant, patient)
            timings[count].append((time.perf_counter() - start) * 1000)
    small, large = statistics.median(timings[10]), statistics.median(timings[10_000])
    print(f"erasure (destroy_patient, SQLite): 10 photos {small:.1f} ms, 10,000 photos {large:.1f} ms, ratio {large / small:.2f}")
    await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
