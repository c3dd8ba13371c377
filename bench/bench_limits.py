"""Limits under load (issue 11, item 6), against `vault serve` in a subprocess.

    .venv/bin/python bench/bench_limits.py [--rounds 3] [--reads 300] [--slow 200] [--uploads 16]

1. p99 of thumbnail reads (concurrency 8) with no other clients (baseline), then with
   ``--slow`` connections trickling a request body at 1 byte/s, in the same run: ratio.
2. Peak RSS (VmHWM of the server process) after ``--uploads`` concurrent 60 MiB photo
   uploads, against the configured ``VAULT_UPLOAD_MEMORY_BYTES`` budget: how many were
   buffered, how many were refused 503 at once. The bodies are a JPEG head and 60 MiB of
   noise: the memory of buffered bodies is what is measured (the decoders, bounded in
   their own processes, reject them as corrupt).
Medians of rounds; ratios are what to compare (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from bench_http import PY, ROOT, free_port, pct, vault_cli, wait_up
from bench_pipeline import sample_jpeg

MiB = 1 << 20


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set of ``pid`` in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def thumb_p99(session, url, auth, total: int) -> float:
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker():
        for _ in queue:
            t0 = time.perf_counter()
            async with session.get(url, headers=auth) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(8)))
    return pct(latencies, 0.99)


async def slow_client(port: int, token: str, stop: asyncio.Event) -> int:
    """One client that sends a JSON body at 1 byte/s; reconnects when cut off. Returns cut-offs."""
    cut = 0
    body = b'{"external_ref": "' + b"x" * 500 + b'"}'
    while not stop.is_set():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST /v1/patients HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode())
        try:
            for byte in body:
                if stop.is_set():
                    break
                writer.write(bytes([byte]))
                try:
                    if await asyncio.wait_for(reader.read(65536), 1.0) or reader.at_eof():
                        cut += 1
                        break
                except TimeoutError:
                    pass
        except ConnectionError:
            cut += 1
        finally:
            writer.close()
    return cut


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--uploads", type=int, default=16)
    parser.add_argument("--upload-mib", type=int, default=60)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-limits-"))
    env = {**os.environ, "VAULT_DATA_DIR": str(tmp / "data"), "VAULT_LOG_LEVEL": "WARNING",
           "VAULT_MAX_UPLOADS_PER_TOKEN": str(args.uploads), "VAULT_HTTP_BODY_TIMEOUT": "10"}
    budget = int(env.setdefault("VAULT_UPLOAD_MEMORY_BYTES", str(512 * MiB)))
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    token = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label", "bench").strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        await wait_up(base)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            async with s.post(base + "/v1/patients", json={"external_ref": "BENCH-L"}, headers=auth) as r:
                pid = (await r.json())["id"]
            async with s.post(f"{base}/v1/patients/{pid}/media", data=io.BytesIO(sample_jpeg()),
                              headers={**auth, "Content-Type": "image/jpeg"}) as r:
                media_id = (await r.json())["id"]
            thumb = f"{base}/v1/media/{media_id}/thumbnail?size=256"
            await thumb_p99(s, thumb, auth, 50)  # warm up

            quiet, loaded = [], []
            for _ in range(args.rounds):
                quiet.append(await thumb_p99(s, thumb, auth, args.reads))
                stop = asyncio.Event()
                slow = [asyncio.create_task(slow_client(port, token, stop)) for _ in range(args.slow)]
                await asyncio.sleep(3)  # all connected and trickling
                loaded.append(await thumb_p99(s, thumb, auth, args.reads))
                stop.set()
                await asyncio.gather(*slow)
            q, w = statistics.median(quiet), statistics.median(loaded)
            print(f"thumbnail p99, no slow clients:      {q:7.1f} ms (median of {args.rounds})")
            print(f"thumbnail p99, {args.slow} slow clients: {w:7.1f} ms")
            print(f"ratio with/without:                  {w / q:7.2f}x  (aim: within 2x)")

            rss_before, _ = rss_mib(server.pid)
            body = sample_jpeg()[:4096] + os.urandom(args.upload_mib * MiB - 4096)
            statuses: list[int] = []

            async def upload():
                async with s.post(f"{base}/v1/patients/{pid}/media", data=io.BytesIO(body),
                                  headers={**auth, "Content-Type": "image/jpeg"}) as r:
                    statuses.append(r.status)
                    await r.read()

            t0 = time.perf_counter()
            await asyncio.gather(*(upload() for _ in range(args.uploads)))
            elapsed = time.perf_counter() - t0
            rss_after, peak = rss_mib(server.pid)
            counts = {code: statuses.count(code) for code in sorted(set(statuses))}
            print(f"{args.uploads} x {args.upload_mib} MiB photo uploads in {elapsed:.1f} s: statuses {counts}")
            print(f"server RSS before {rss_before:.0f} MiB, peak {peak:.0f} MiB (+{peak - rss_before:.0f}), "
                  f"budget {budget / MiB:.0f} MiB; peak growth / budget = {(peak - rss_before) / (budget / MiB):.2f}")
            print(f"unbounded would buffer {args.uploads * args.upload_mib} MiB "
                  f"({args.uploads * args.upload_mib / (budget / MiB):.2f}x the budget)")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    asyncio.run(main())
