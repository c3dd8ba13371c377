"""Root-key wrap/unwrap latency: PKCS#11 on SoftHSM2 against the file keyring (AES-GCM in
process), measured in the same run, medians of per-call latencies.

    .venv/bin/python bench/bench_root_keys.py [--calls 2000] [--concurrency 32]

- sequential: one call at a time (what a KEK-cache miss costs a request);
- concurrent: ``--concurrency`` tasks at once (the PKCS#11 provider serialises on its
  own single thread; the file provider runs on the event loop), calls per second.

Needs softhsm2 (Debian: ``apt-get install softhsm2``); the token is created in a
temporary folder (tests/support/softhsm.py).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keys.providers import open_root_key  # noqa: E402
from tests.support.softhsm import start_softhsm  # noqa: E402

CONTEXT = {"purpose": "tenant-kek", "tenant": "bench", "kek_version": "1"}


async def _sequential(provider, version: str, calls: int) -> dict[str, float]:
    secret = secrets.token_bytes(32)
    wraps, unwraps = [], []
    for _ in range(calls):
        t = time.perf_counter()
        blob = await provider.wrap(version, secret, CONTEXT)
        wraps.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert await provider.unwrap(version, blob, CONTEXT) == secret
        unwraps.append(time.perf_counter() - t)
    return {"wrap_us": statistics.median(wraps) * 1e6, "unwrap_us": statistics.median(unwraps) * 1e6}


async def _concurrent(provider, version: str, calls: int, concurrency: int) -> float:
    secret = secrets.token_bytes(32)
    blob = await provider.wrap(version, secret, CONTEXT)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await provider.unwrap(version, blob, CONTEXT)

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    return calls / (time.perf_counter() - t)


async def main(calls: int, concurrency: int) -> None:
    hsm = start_softhsm()
    with tempfile.TemporaryDirectory() as folder:
        providers = {
            "file": open_root_key(f"file://{folder}/keyring", production=False),
            "pkcs11": open_root_key(hsm.url(prefix="bench-"), production=True),
        }
        results: dict[str, dict[str, float]] = {}
        try:
            for name, provider in providers.items():
                await provider.create_version("v1")
                await _sequential(provider, "v1", 50)  # warm-up: session, login, caches
            # Interleaved rounds, so drift on a shared machine hits both alike.
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in providers}
            for _ in range(5):
                for name, provider in providers.items():
                    seq = await _sequential(provider, "v1", calls // 5)
                    seq["concurrent_per_s"] = await _concurrent(provider, "v1", calls // 5, concurrency)
                    rounds[name].append(seq)
            for name, runs in rounds.items():
                results[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        finally:
            for provider in providers.values():
                await provider.close()
    f, p = results["file"], results["pkcs11"]
    print(f"{'provider':<10} {'wrap µs':>10} {'unwrap µs':>10} {'unwrap/s @' + str(concurrency):>14}")
    for name, r in results.items():
        print(f"{name:<10} {r['wrap_us']:>10.1f} {r['unwrap_us']:>10.1f} {r['concurrent_per_s']:>14.0f}")
    print(f"ratio pkcs11/file: wrap {p['wrap_us'] / f['wrap_us']:.1f}x, unwrap {p['unwrap_us'] / f['unwrap_us']:.1f}x, "
          f"concurrent throughput {p['concurrent_per_s'] / f['concurrent_per_s']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency))
