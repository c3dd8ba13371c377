"""The cost of a request through the TLS proxy (deploy/nginx/vault.conf) against the same
request sent to the node directly, measured in the same run.

    .venv/bin/python bench/bench_proxy.py [--rounds 3] [--seconds 5]

One `vault serve` (embedded default: the proxy's cost does not depend on the database)
and Debian's nginx running the shipped site file exactly as tests/deploy/test_nginx.py
starts it (only ports, certificate, log and temp paths replaced; TLS with a self-signed
P-256 certificate; streaming both ways, keepalive to the node). From this process (aiohttp,
connections kept alive on both paths, as a records system would):
- audited thumbnail GETs (256 px) at concurrency 8: requests/s and p50;
- a 2 MiB Range read of a decrypted original at concurrency 2: MiB/s;
- photo ingest (a 2 MP JPEG) at concurrency 2: photos/s.
Rounds alternate direct/proxied; medians; proxied / direct is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

from bench_http import free_port, vault_cli, wait_up  # noqa: E402
from bench_pipeline import sample_jpeg  # noqa: E402
from tests.deploy.test_nginx import _certificate, _nginx_config  # noqa: E402 - the shipped config, as tested

PY = str(ROOT / ".venv" / "bin" / "python")
RANGE = 2 * 1024 * 1024


async def timed(n_clients: int, seconds: float, one) -> tuple[int, float, float]:
    """(operations, elapsed, p50 seconds) of ``one()`` run by ``n_clients`` for ``seconds``."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    return len(latencies), time.perf_counter() - t0, statistics.median(latencies)


async def measure(args, env: dict[str, str], folder: Path, nginx: str) -> None:
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    token = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label",
                      "bench").strip().splitlines()[-1]
    node = free_port()
    with open(folder / "node.log", "wb") as out:
        serve = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--port", str(node)], env=env, cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT)
    proxy_dir = folder / "nginx"
    proxy_dir.mkdir()
    cert, key = _certificate(proxy_dir)
    port = free_port()
    config = _nginx_config(proxy_dir, port=port, nodes=[node], cert=cert, key=key)
    proxy = subprocess.Popen([nginx, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_up(f"http://127.0.0.1:{node}")
        headers = {"Authorization": f"Bearer {token}"}
        tls = ssl.create_default_context(cafile=str(cert))
        bases = {"direct": f"http://127.0.0.1:{node}", "proxied": f"https://127.0.0.1:{port}"}
        photo = sample_jpeg(1600, 1200)
        big = sample_jpeg(4000, 3000)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as s:
            for _ in range(100):
                try:
                    async with s.get(bases["proxied"] + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            async with s.post(bases["direct"] + "/v1/patients", json={"external_ref": "BENCH-P"}, headers=headers) as r:
                patient = (await r.json())["id"]
            async with s.post(f"{bases['direct']}/v1/patients/{patient}/media?phase=before", data=big,
                              headers={**headers, "Content-Type": "image/jpeg"}) as r:
                media = (await r.json())["id"]
        results: dict[str, dict[str, list[float]]] = {p: {"rps": [], "p50": [], "mibs": [], "ingest": []}
                                                      for p in bases}
        for round_no in range(args.rounds):
            for path in (bases if round_no % 2 == 0 else list(reversed(bases))):
                base = bases[path]
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, limit=32)) as s:
                    async def thumb() -> None:
                        async with s.get(f"{base}/v1/media/{media}/thumbnail?size=256", headers=headers) as r:
                            await r.read()
                            assert r.status == 200, r.status

                    async def ranged() -> None:
                        async with s.get(f"{base}/v1/media/{media}/content",
                                         headers={**headers, "Range": f"bytes=0-{RANGE - 1}"}) as r:
                            assert len(await r.read()) == RANGE and r.status == 206, r.status

                    async def upload() -> None:
                        async with s.post(f"{base}/v1/patients/{patient}/media?phase=progress", data=photo,
                                          headers={**headers, "Content-Type": "image/jpeg"}) as r:
                            await r.read()
                            assert r.status == 201, r.status

                    await timed(8, 1.0, thumb)  # warm-up: connections open, TLS sessions made
                    count, elapsed, p50 = await timed(8, args.seconds, thumb)
                    reads, read_elapsed, _ = await timed(2, args.seconds, ranged)
                    uploads, up_elapsed, _ = await timed(2, args.seconds, upload)
                results[path]["rps"].append(count / elapsed)
                results[path]["p50"].append(p50)
                results[path]["mibs"].append(reads * RANGE / 2**20 / read_elapsed)
                results[path]["ingest"].append(uploads / up_elapsed)
                print(f"round {round_no + 1} {path:<8}: thumbnails {count / elapsed:7.1f}/s p50 {1000 * p50:6.1f} ms; "
                      f"range reads {reads * RANGE / 2**20 / read_elapsed:6.1f} MiB/s; "
                      f"ingest {uploads / up_elapsed:5.2f} photos/s", flush=True)
        med = {p: {k: statistics.median(v) for k, v in r.items()} for p, r in results.items()}
        d, p = med["direct"], med["proxied"]
        print()
        print(f"| measure (medians of {args.rounds} rounds) | direct | through nginx + TLS | proxied / direct |")
        print("|---|---:|---:|---:|")
        print(f"| thumbnail GETs/s, concurrency 8 | {d['rps']:.1f} | {p['rps']:.1f} | **{p['rps'] / d['rps']:.2f}×** |")
        print(f"| thumbnail p50 | {1000 * d['p50']:.1f} ms | {1000 * p['p50']:.1f} ms | "
              f"{p['p50'] / d['p50']:.2f}× ({1000 * (p['p50'] - d['p50']):+.1f} ms) |")
        print(f"| 2 MiB Range reads, concurrency 2 | {d['mibs']:.1f} MiB/s | {p['mibs']:.1f} MiB/s | "
              f"**{p['mibs'] / d['mibs']:.2f}×** |")
        print(f"| ingest photos/s (2 MP JPEG), concurrency 2 | {d['ingest']:.2f} | {p['ingest']:.2f} | "
              f"**{p['ingest'] / d['ingest']:.2f}×** |")
    finally:
        for proc in (proxy, serve):
            proc.terminate()
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("needs Debian's nginx (apt-get install nginx-light)")
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        folder = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env.update(VAULT_DATA_DIR=str(folder / "data"), VAULT_LOG_LEVEL="WARNING", VAULT_DECODER_WORKERS="1",
                   XDG_DATA_HOME=str(folder / "xdg"))
        asyncio.run(measure(args, env, folder, nginx))


if __name__ == "__main__":
    main()
