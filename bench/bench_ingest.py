"""Photo ingest through `vault serve`: photos accepted per second at concurrency 1 and 4, and
photos fully processed (the full-resolution face search job included) per second.

    .venv/bin/python bench/bench_ingest.py [--rounds 3] [--c1 6] [--c4 12] [--photo FILE]
        [--processed 8] [--profile DIR]

Starts `vault serve` (embedded default, in-process jobs, YuNet when ../shared/models has it)
and POSTs a 12 MP JPEG (``--photo``, default the peers harness's /tmp/peers-data/photo12mp.jpg
when present, else bench_pipeline.sample_jpeg) as a raw body, closed loop, in interleaved
rounds of ``--c1`` uploads at concurrency 1 and ``--c4`` at concurrency 4; prints medians, the
c=4 / c=1 ratio, the server's and the decoder workers' CPU per photo, and the server's RSS
after start and after the first upload. Before the rounds, with no
search backlog, ``--processed`` uploads at concurrency 4 and the time until every one of them
has its full face search done (``faces.state`` no longer ``pending``): photos fully processed
per second. During the rounds the searches of earlier uploads run too, as they would.
Orthanc's figure for the same photo comes from the shared peers harness
(../shared/bench/peers/run.sh), run in the same session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_read import PY, ROOT, cpu_seconds, free_port, summarise_profile, vault_cli, wait_ok

import aiohttp

MODEL = ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx"
PEERS_PHOTO = Path("/tmp/peers-data/photo12mp.jpg")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def tree_cpu(pid: int) -> tuple[float, float]:
    """(server CPU s, decoder workers' CPU s), the workers alive now."""
    workers = 0.0
    for child in children(pid):
        try:
            workers += cpu_seconds(child)
        except OSError:
            pass
    return cpu_seconds(pid), workers


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mapped(pid: int) -> list[str]:
    """Which of the decoders' libraries have a shared object mapped into the server."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in ("cv2", "av", "numpy", "pillow_heif", "PIL")
            if f"/site-packages/{name}/" in maps or f"/site-packages/{name}.libs/" in maps]


async def upload(s: aiohttp.ClientSession, url: str, photo: bytes, headers: dict[str, str]) -> str:
    async with s.post(url, data=photo, headers=headers) as r:
        body = await r.json()
        if r.status != 201:
            raise RuntimeError(f"upload answered {r.status}: {body}")
        return str(body["id"])


async def closed_loop(s: aiohttp.ClientSession, url: str, photo: bytes, headers: dict[str, str], *,
                      count: int, conc: int) -> tuple[float, list[str]]:
    ids: list[str] = []
    left = count

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            ids.append(await upload(s, url, photo, headers))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(conc)))
    return count / (time.perf_counter() - start), ids


async def drain(s: aiohttp.ClientSession, base: str, ids: list[str], headers: dict[str, str], *, limit: float) -> float:
    """Seconds until none of ``ids`` is pending its full face search."""
    start, left = time.perf_counter(), list(ids)
    while left:
        still = []
        for media_id in left:
            async with s.get(f"{base}/v1/media/{media_id}", headers=headers) as r:
                if (await r.json())["faces"]["state"] == "pending":
                    still.append(media_id)
        left = still
        if left:
            if time.perf_counter() - start > limit:
                raise RuntimeError("the face searches did not finish in time")
            await asyncio.sleep(0.5)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--c1", type=int, default=6)
    parser.add_argument("--c4", type=int, default=12)
    parser.add_argument("--processed", type=int, default=8)
    parser.add_argument("--photo", type=Path)
    parser.add_argument("--profile", type=Path, help="py-spy the server and its workers during one more c=4 round")
    args = parser.parse_args()
    if args.photo:
        photo = args.photo.read_bytes()
    elif PEERS_PHOTO.is_file():
        photo = PEERS_PHOTO.read_bytes()
    else:
        from bench_pipeline import sample_jpeg

        photo = sample_jpeg()

    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-ingest-"))
    env = {**os.environ, "VAULT_DATA_DIR": str(tmp / "data"), "VAULT_LOG_LEVEL": "WARNING",
           "VAULT_ROOT_KEY_URL": (tmp / "keyring").as_uri()}
    for name in ("VAULT_DATABASE_URL", "VAULT_KEYSTORE_URL", "VAULT_STORAGE_URL"):
        env.pop(name, None)
    if MODEL.is_file():
        env["VAULT_FACE_MODEL"] = str(MODEL)
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    writer = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label", "bench-up").strip().splitlines()[-1]
    port = free_port()
    server = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {writer}"}
    up = {**auth, "Content-Type": "image/jpeg"}
    out: dict[str, object] = {"photo_bytes": len(photo), "load_before": os.getloadavg()}
    try:
        await wait_ok(base + "/readyz")
        await asyncio.sleep(2)
        out["rss_start_mib"] = round(rss_mib(server.pid), 1)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async with s.post(base + "/v1/patients", json={"external_ref": "BENCH-INGEST"}, headers=auth) as r:
                pid = (await r.json())["id"]
            url = f"{base}/v1/patients/{pid}/media?phase=before"
            first = [await upload(s, url, photo, up)]
            out["rss_first_upload_mib"] = round(rss_mib(server.pid), 1)
            await drain(s, base, first, auth, limit=300)
            out["rss_after_search_mib"] = round(rss_mib(server.pid), 1)
            out["server_maps_after_search"] = mapped(server.pid)
            # Fully processed, with no backlog before: N uploads at c=4 and their searches.
            start = time.perf_counter()
            _, ids = await closed_loop(s, url, photo, up, count=args.processed, conc=4)
            accepted = time.perf_counter() - start
            await drain(s, base, ids, auth, limit=1200)
            done = time.perf_counter() - start
            out["processed_batch"] = args.processed
            out["processed_accepted_per_s"] = round(args.processed / accepted, 2)
            out["processed_per_s"] = round(args.processed / done, 3)
            await closed_loop(s, url, photo, up, count=4, conc=4)  # warm-up
            c1, c4, cpu_server, cpu_workers = [], [], [], []
            for _ in range(args.rounds):
                for conc, count, rates in ((1, args.c1, c1), (4, args.c4, c4)):
                    s0, w0 = tree_cpu(server.pid)
                    rate, _ = await closed_loop(s, url, photo, up, count=count, conc=conc)
                    s1, w1 = tree_cpu(server.pid)
                    rates.append(rate)
                    cpu_server.append((s1 - s0) / count)
                    cpu_workers.append((w1 - w0) / count)
            out["load_during"] = os.getloadavg()
            out["c1_rounds"] = [round(r, 2) for r in c1]
            out["c4_rounds"] = [round(r, 2) for r in c4]
            out["c1"] = round(statistics.median(c1), 2)
            out["c4"] = round(statistics.median(c4), 2)
            out["c4_over_c1"] = round(statistics.median(c4) / statistics.median(c1), 2)
            out["server_cpu_ms_per_photo"] = round(statistics.median(cpu_server) * 1000)
            out["workers_cpu_ms_per_photo_during_uploads"] = round(statistics.median(cpu_workers) * 1000)
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                raw = args.profile / "ingest.txt"
                spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
                rec = subprocess.Popen([spy, "record", "--format", "raw", "--subprocesses", "-r", "200", "-o", str(raw),
                                        "-p", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(1)
                await closed_loop(s, url, photo, up, count=args.c4, conc=4)
                rec.send_signal(2)
                rec.wait()
                out["profile"] = summarise_profile(raw) if raw.exists() else "py-spy wrote nothing"
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    profile = out.pop("profile", None)
    print(json.dumps(out))
    print(f"ingest 12 MP JPEG: c=1 {out['c1']} photos/s, c=4 {out['c4']} photos/s, c=4/c=1 {out['c4_over_c1']};"
          f" fully processed {out['processed_per_s']} photos/s; RSS start {out['rss_start_mib']} MiB,"
          f" after one upload {out['rss_first_upload_mib']} MiB")
    if profile:
        print(profile)


if __name__ == "__main__":
    asyncio.run(main())
