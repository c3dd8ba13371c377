"""Video upload through the running vault, against aiohttp's own read-and-discard rate.

    .venv/bin/python bench/bench_video_upload.py [--size-mb 1024] [--rounds 3]

Builds a real H.264/AAC QuickTime file of the given size (generated test data in a temp
folder), starts `vault serve` (embedded default, fresh data folder) and a minimal aiohttp
app that reads request bodies and discards them, both as subprocesses, then measures:
- upload throughput (median of rounds), vault vs read-and-discard, and the ratio;
- the vault server's peak RSS (VmHWM) and its RSS before the uploads (aim: peak under
  150 MiB whatever the file size);
- after the finishing job has run, the latency of a 1 MiB Range GET in the middle of the
  stripped video (median of 20), vs the same range of the plain file from aiohttp's
  FileResponse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from bench_http import free_port, vault_cli, wait_up, wait_until  # noqa: E402
from bench_video import make_sample, make_unit  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")
MiB = 1 << 20

DISCARD = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    async def discard(request):
        n = 0
        while chunk := await request.content.read(1 << 18):
            n += len(chunk)
        return web.json_response({"read": n})
    async def healthz(request):
        return web.json_response({})
    async def file(request):
        return web.FileResponse(sys.argv[2])
    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/discard", discard)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/file", file)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)


def rss(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def post_file(session, url, path: Path, headers) -> float:
    t0 = time.perf_counter()
    with path.open("rb") as body:
        async with session.post(url, data=body, headers=headers) as r:
            await r.read()
            assert r.status in (200, 201), (r.status, await r.text())
    return time.perf_counter() - t0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-video-"))
    unit, sample = tmp / "unit.mov", tmp / "sample.mov"
    make_unit(str(unit))
    size = make_sample(str(unit), str(sample), args.size_mb * MiB)
    unit.unlink()

    env = {**os.environ, "VAULT_DATA_DIR": str(tmp / "data"), "VAULT_LOG_LEVEL": "WARNING",
           "VAULT_MAX_VIDEO_BYTES": str(size * 2), "VAULT_JOB_POLL_MS": "200"}
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    token = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label", "bench").strip().splitlines()[-1]
    port, dport = free_port(), free_port()
    server = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    discard = subprocess.Popen([PY, "-c", DISCARD, str(dport), str(sample)])
    base, dbase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dport}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        await wait_up(base)
        await wait_until(dbase + "/healthz")
        rss_start = rss(server.pid, "VmRSS")
        timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.post(base + "/v1/patients", json={"external_ref": "BENCH-V"}, headers=auth) as r:
                pid = (await r.json())["id"]
            vault_t, discard_t = [], []
            for _ in range(args.rounds):
                discard_t.append(await post_file(s, dbase + "/discard", sample, {"Content-Type": "video/quicktime"}))
                vault_t.append(await post_file(s, f"{base}/v1/patients/{pid}/media", sample,
                                               {**auth, "Content-Type": "video/quicktime"}))
            rss_peak = rss(server.pid, "VmHWM")
            async with s.get(f"{base}/v1/patients/{pid}/media", headers=auth) as r:
                media_id = (await r.json())["items"][0]["id"]
            for _ in range(3000):
                async with s.get(f"{base}/v1/media/{media_id}", headers=auth) as r:
                    status = (await r.json())["status"]
                if status != "processing":
                    break
                await asyncio.sleep(0.5)
            assert status == "ready", status
            async with s.head(f"{base}/v1/media/{media_id}/content", headers=auth) as r:
                stripped_size = int(r.headers["Content-Length"])
            seek_v, seek_b = [], []
            for i in range(20):
                mid = stripped_size // 2 + i * 4 * MiB % (stripped_size // 4)
                rng = {"Range": f"bytes={mid}-{mid + MiB - 1}"}
                t0 = time.perf_counter()
                async with s.get(f"{base}/v1/media/{media_id}/content", headers={**auth, **rng}) as r:
                    assert r.status == 206 and len(await r.read()) == MiB
                seek_v.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                async with s.get(f"{dbase}/file", headers=rng) as r:
                    assert r.status == 206 and len(await r.read()) == MiB
                seek_b.append(time.perf_counter() - t0)
    finally:
        for proc in (server, discard):
            proc.terminate()
            proc.wait()
    v, d = statistics.median(vault_t), statistics.median(discard_t)
    print(f"video: {size / MiB:.0f} MiB H.264/AAC QuickTime; {args.rounds} rounds")
    print(f"upload: vault {size / MiB / v:.0f} MiB/s, read-and-discard {size / MiB / d:.0f} MiB/s, ratio {d / v:.2f}")
    print(f"server RSS: {rss_start:.0f} MiB after start, peak {rss_peak:.0f} MiB (aim < 150 MiB)")
    print(f"1 MiB range in the middle: vault p50 {statistics.median(seek_v) * 1000:.1f} ms, "
          f"plain file {statistics.median(seek_b) * 1000:.1f} ms (x{statistics.median(seek_v) / statistics.median(seek_b):.1f})")


if __name__ == "__main__":
    asyncio.run(main())
