"""Two API nodes against one, on PostgreSQL, at the same total client concurrency.

    VAULT_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/bench_nodes.py [--rounds 3] [--seconds 6] [--uploads 24]

One fresh PostgreSQL database (dropped afterwards), one blob folder and one root keyring
shared by three `vault serve` processes (no worker is needed for photos):
- "one node": node A, with 2 decoder worker processes;
- "two nodes": nodes B and C, 1 decoder worker each — the same decoder capacity, so the
  ratio shows what a second API process (event loop, connections, audit writer) adds.
Rounds alternate one/two; each measures, from this process (aiohttp, one session per node,
the clients spread evenly over the nodes):
- audited thumbnail GETs (256 px) at concurrency 16: requests/s, p50, p99;
- photo ingest (a 2 MP JPEG with EXIF) at concurrency 4: photos/s.
Medians over rounds; two/one is the figure (the machine is shared, absolute numbers are not).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
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
from sqlalchemy.engine import make_url  # noqa: E402

from bench_http import free_port, vault_cli, wait_up  # noqa: E402
from bench_pipeline import sample_jpeg  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
THUMB_CONCURRENCY = 16
INGEST_CONCURRENCY = 4


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                                 password=u.password, database=u.database or "postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start_node(env: dict[str, str], port: int, decoders: int, log: Path) -> subprocess.Popen:
    node_env = {**env, "VAULT_DECODER_WORKERS": str(decoders)}
    with open(log, "wb") as out:
        return subprocess.Popen([PY, "-m", "vault.cli", "serve", "--port", str(port)], env=node_env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


async def thumbnails(sessions: list[aiohttp.ClientSession], urls: list[str], headers, seconds: float):
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(sessions[i % len(sessions)], urls[i % len(urls)])
                           for i in range(THUMB_CONCURRENCY)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return len(latencies) / elapsed, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


async def ingest(sessions: list[aiohttp.ClientSession], paths: list[str], headers, photo: bytes, total: int) -> float:
    queue = iter(range(total))

    async def client(number: int) -> None:
        session, path = sessions[number % len(sessions)], paths[number % len(paths)]
        for _ in queue:
            async with session.post(path, data=photo, headers={**headers, "Content-Type": "image/jpeg"}) as r:
                body = await r.read()
                assert r.status == 201, (r.status, body[:200])

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(INGEST_CONCURRENCY)))
    return total / (time.perf_counter() - t0)


async def measure(args, env: dict[str, str], folder: Path) -> None:
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    token = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label",
                      "bench").strip().splitlines()[-1]
    ports = {name: free_port() for name in "abc"}
    procs = [start_node(env, ports["a"], 2, folder / "a.log"), start_node(env, ports["b"], 1, folder / "b.log"),
             start_node(env, ports["c"], 1, folder / "c.log")]
    try:
        for port in ports.values():
            await wait_up(f"http://127.0.0.1:{port}")
        headers = {"Authorization": f"Bearer {token}"}
        base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        photo = sample_jpeg(1600, 1200)
        async with aiohttp.ClientSession() as s:
            async with s.post(base["a"] + "/v1/patients", json={"external_ref": "BENCH-1"}, headers=headers) as r:
                patient = (await r.json())["id"]
            media = []
            for i in range(4):
                async with s.post(f"{base['a']}/v1/patients/{patient}/media?phase=before", data=photo,
                                  headers={**headers, "Content-Type": "image/jpeg"}) as r:
                    media.append((await r.json())["id"])
        configs = {"one node": ["a"], "two nodes": ["b", "c"]}
        results: dict[str, dict[str, list[float]]] = {c: {"rps": [], "p50": [], "p99": [], "ingest": []} for c in configs}
        for round_no in range(args.rounds):
            order = list(configs) if round_no % 2 == 0 else list(reversed(configs))
            for config in order:
                names = configs[config]
                connector = [aiohttp.TCPConnector(limit=64) for _ in names]
                sessions = [aiohttp.ClientSession(connector=c) for c in connector]
                try:
                    urls = [f"{base[n]}/v1/media/{m}/thumbnail?size=256" for n, m in zip(itertools.cycle(names), media * 2)]
                    await thumbnails(sessions, urls, headers, 1.0)  # warm-up
                    rps, p50, p99 = await thumbnails(sessions, urls, headers, args.seconds)
                    paths = [f"{base[n]}/v1/patients/{patient}/media?phase=progress" for n in names]
                    photos = await ingest(sessions, paths, headers, photo, args.uploads)
                finally:
                    for session in sessions:
                        await session.close()
                for key, value in (("rps", rps), ("p50", p50), ("p99", p99), ("ingest", photos)):
                    results[config][key].append(value)
                print(f"round {round_no + 1} {config:<9}: thumbnails {rps:7.1f}/s p50 {1000 * p50:6.1f} ms "
                      f"p99 {1000 * p99:6.1f} ms; ingest {photos:5.2f} photos/s", flush=True)
        med = {c: {k: statistics.median(v) for k, v in r.items()} for c, r in results.items()}
        one, two = med["one node"], med["two nodes"]
        print()
        print("| measure (medians of %d rounds) | one node | two nodes | two / one |" % args.rounds)
        print("|---|---:|---:|---:|")
        print(f"| thumbnail GETs/s, concurrency {THUMB_CONCURRENCY} | {one['rps']:.1f} | {two['rps']:.1f} | "
              f"**{two['rps'] / one['rps']:.2f}×** |")
        print(f"| thumbnail p50 | {1000 * one['p50']:.1f} ms | {1000 * two['p50']:.1f} ms | "
              f"{two['p50'] / one['p50']:.2f}× |")
        print(f"| thumbnail p99 | {1000 * one['p99']:.1f} ms | {1000 * two['p99']:.1f} ms | "
              f"{two['p99'] / one['p99']:.2f}× |")
        print(f"| ingest photos/s (2 MP JPEG), concurrency {INGEST_CONCURRENCY} | {one['ingest']:.2f} | "
              f"{two['ingest']:.2f} | **{two['ingest'] / one['ingest']:.2f}×** |")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--uploads", type=int, default=24)
    parser.add_argument("--database-url", default=os.environ.get("VAULT_TEST_DATABASE_URL"))
    args = parser.parse_args()
    if not args.database_url:
        sys.exit("set VAULT_TEST_DATABASE_URL (or --database-url): the nodes share one PostgreSQL database")
    name = "vault_bench_" + secrets.token_hex(4)
    asyncio.run(_admin(args.database_url, f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(args.database_url).set(database=name).render_as_string(hide_password=False)
        with tempfile.TemporaryDirectory(prefix="bench-nodes-") as tmp:
            folder = Path(tmp)
            env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
            env.update(VAULT_DATA_DIR=str(folder / "data"), VAULT_DATABASE_URL=url, VAULT_KEYSTORE_URL=url,
                       VAULT_STORAGE_URL=(folder / "blobs").as_uri(),
                       VAULT_ROOT_KEY_URL=(folder / "keyring").as_uri(), VAULT_INPROCESS_JOBS="false",
                       VAULT_LOG_LEVEL="WARNING", XDG_DATA_HOME=str(folder / "xdg"))
            asyncio.run(measure(args, env, folder))
    finally:
        asyncio.run(_admin(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
