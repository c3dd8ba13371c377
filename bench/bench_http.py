"""Hot HTTP paths of the running vault, against baselines measured in the same run.

    .venv/bin/python bench/bench_http.py [--requests 400] [--uploads 12]

Starts `vault serve` (embedded default, fresh temp data folder, in a subprocess) and a
minimal aiohttp app that serves the same thumbnail bytes from memory (another
subprocess), then measures from this process:
- thumbnail GET requests/s and p50/p99 at concurrency 16, vault vs the minimal handler
  (every vault fetch is authorised, tenant-checked, decrypted and durably audited);
- photo ingest (upload of a 12 MP JPEG) photos/s at concurrency 1 and 4;
- audit entries/s: reads audited with group commit, vs one commit per entry.
Medians of repeated rounds; ratios are what to compare (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

from bench_pipeline import sample_jpeg  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vault_cli(env, *args) -> str:
    return subprocess.run([PY, "-m", "vault.cli", *args], env=env, check=True, capture_output=True, text=True).stdout


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def load(session, url, headers, *, total: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker():
        for _ in queue:
            t0 = time.perf_counter()
            async with session.get(url, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0), latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))] * 1000


MINIMAL = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    body = open(sys.argv[2], "rb").read()
    async def thumb(request):
        return web.Response(body=body, content_type="image/jpeg")
    app = web.Application()
    app.router.add_get("/thumb", thumb)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--uploads", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-"))
    env = {**os.environ, "VAULT_DATA_DIR": str(tmp / "data"), "VAULT_LOG_LEVEL": "WARNING"}
    model = ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx"
    if model.exists():
        env["VAULT_FACE_MODEL"] = str(model)
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    token = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label", "bench").strip().splitlines()[-1]
    port, mport = free_port(), free_port()
    server = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    photo = sample_jpeg()
    try:
        await wait_up(base)
        conn = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.post(base + "/v1/patients", json={"external_ref": "BENCH-1"}, headers=auth) as r:
                pid = (await r.json())["id"]

            async def upload_one():
                async with s.post(f"{base}/v1/patients/{pid}/media", data=io.BytesIO(photo),
                                  headers={**auth, "Content-Type": "image/jpeg"}) as r:
                    body = await r.json()
                    assert r.status == 201, body
                    return body["id"]

            ingest = {}
            media_id = None
            for concurrency in (1, 4):
                rates = []
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    ids = []
                    for _ in range(args.uploads // concurrency):
                        ids += await asyncio.gather(*(upload_one() for _ in range(concurrency)))
                    rates.append(len(ids) / (time.perf_counter() - t0))
                    media_id = ids[0]
                ingest[concurrency] = statistics.median(rates)

            thumb_url = f"{base}/v1/media/{media_id}/thumbnail?size=256"
            async with s.get(thumb_url, headers=auth) as r:
                thumb = await r.read()
            (tmp / "thumb.jpg").write_bytes(thumb)
            minimal = subprocess.Popen([PY, "-c", MINIMAL, str(mport), str(tmp / "thumb.jpg")])
            try:
                await wait_until(f"http://127.0.0.1:{mport}/thumb")
                vault_rates, base_rates, vault_lat, base_lat = [], [], [], []
                for _ in range(args.rounds):
                    rate, lat = await load(s, f"http://127.0.0.1:{mport}/thumb", {}, total=args.requests, concurrency=16)
                    base_rates.append(rate)
                    base_lat += lat
                    rate, lat = await load(s, thumb_url, auth, total=args.requests, concurrency=16)
                    vault_rates.append(rate)
                    vault_lat += lat
            finally:
                minimal.terminate()
                minimal.wait()
    finally:
        server.terminate()
        server.wait()

    audit = await audit_rates(tmp)
    v, b = statistics.median(vault_rates), statistics.median(base_rates)
    print(f"photo: {len(photo) / 1e6:.1f} MB 12 MP JPEG; thumbnail {len(thumb)} bytes")
    print(f"ingest photos/s: concurrency 1 = {ingest[1]:.2f}, concurrency 4 = {ingest[4]:.2f} (x{ingest[4] / ingest[1]:.2f})")
    print(f"thumbnail GET c=16: vault {v:.0f} req/s p50 {pct(vault_lat, .5):.1f} ms p99 {pct(vault_lat, .99):.1f} ms")
    print(f"                    minimal {b:.0f} req/s p50 {pct(base_lat, .5):.1f} ms p99 {pct(base_lat, .99):.1f} ms")
    print(f"                    ratio vault/minimal = {v / b:.2f} (aim >= 0.50; audited + decrypted on every fetch)")
    print(f"audit entries/s: group commit {audit[0]:.0f}, one commit per entry {audit[1]:.0f} (x{audit[0] / audit[1]:.1f})")


async def wait_until(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def audit_rates(tmp: Path, n: int = 2000) -> tuple[float, float]:
    from vault.actor import Actor
    from vault.audit.service import AuditEvent
    from vault.config import Settings
    from vault.runtime import runtime

    settings = Settings.from_env({"VAULT_DATA_DIR": str(tmp / "data")})
    async with runtime(settings) as rt:
        tenant = (await rt.tenants.tenant_by_slug("bench")).id
        actor = Actor(tenant, "bench", "records", "bench")
        t0 = time.perf_counter()
        await asyncio.gather(*(rt.audit.record(AuditEvent.of(actor, "bench.read")) for _ in range(n)))
        grouped = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(n // 10):
            async with rt.db.transaction() as session:
                await rt.audit.append(session, AuditEvent.of(actor, "bench.read"))
        single = (n // 10) / (time.perf_counter() - t0)
    return grouped, single


if __name__ == "__main__":
    asyncio.run(main())
