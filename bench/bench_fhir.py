"""FHIR R4 reads against their /v1 equivalents, measured in the same run (issue 19 item 3).

    .venv/bin/python bench/bench_fhir.py [--requests 300] [--rounds 3] [--concurrency 8]

Starts `vault serve` (embedded default, fresh temp data folder, in a subprocess), uploads a
12 MP JPEG, then alternates, round after round, at the same concurrency:
- metadata: `GET /fhir/R4/Media/{id}` vs `GET /v1/media/{id}` (both tenant-checked, decrypt
  the sealed capture record and durably audit `media.read`; FHIR also reads the blob sizes);
- content: `GET /fhir/R4/Binary/{id}` vs `GET /v1/media/{id}/content` (the stripped original,
  decrypted and streamed, audited `media.content`).
Prints medians of requests/s and the ratio FHIR / v1 (aim: >= 0.9; the same work underneath).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

from bench_http import PY, free_port, load, pct, vault_cli, wait_up  # noqa: E402
from bench_pipeline import sample_jpeg  # noqa: E402
from bench_read import upload_sample  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-fhir-"))
    env = {**os.environ, "VAULT_DATA_DIR": str(tmp / "data"), "VAULT_LOG_LEVEL": "WARNING"}
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    tokens = {role: vault_cli(env, "token", "create", "--tenant", "bench", "--role", role, "--label", "bench").strip().splitlines()[-1]
              for role in ("practitioner", "records")}
    port = free_port()
    server = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    photo = sample_jpeg()
    results: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    try:
        await wait_up(base)
        media_id, _ = await upload_sample(base, tokens["practitioner"], tokens["records"])
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            records = {"Authorization": f"Bearer {tokens['records']}"}
            pairs = {
                "metadata v1": f"{base}/v1/media/{media_id}",
                "metadata fhir": f"{base}/fhir/R4/Media/{media_id}",
                "content v1": f"{base}/v1/media/{media_id}/content",
                "content fhir": f"{base}/fhir/R4/Binary/{media_id}",
            }
            for url in pairs.values():  # warm up
                await load(s, url, records, total=20, concurrency=4)
            for _ in range(args.rounds):
                for name, url in pairs.items():
                    total = args.requests if name.startswith("metadata") else max(20, args.requests // 5)
                    rate, lat = await load(s, url, records, total=total, concurrency=args.concurrency)
                    results.setdefault(name, []).append(rate)
                    latencies.setdefault(name, []).extend(lat)
    finally:
        server.terminate()
        server.wait()

    print(f"photo: {len(photo) / 1e6:.1f} MB 12 MP JPEG (stripped original served); concurrency {args.concurrency}, "
          f"{args.rounds} rounds, medians")
    for what in ("metadata", "content"):
        v1, fhir = statistics.median(results[f"{what} v1"]), statistics.median(results[f"{what} fhir"])
        print(f"{what:8}  v1 {v1:7.1f} req/s p50 {pct(latencies[f'{what} v1'], .5):6.1f} ms | "
              f"fhir {fhir:7.1f} req/s p50 {pct(latencies[f'{what} fhir'], .5):6.1f} ms | ratio fhir/v1 = {fhir / v1:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
