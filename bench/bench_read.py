"""The audited read path (thumbnail GET) against a bare aiohttp read+decrypt server, same run.

    .venv/bin/python bench/bench_read.py [--rounds 3] [--secs 5] [--conc 16]
        [--pg postgresql+asyncpg://postgres@127.0.0.1:5432/postgres] [--profile DIR] [--processes 1,2]

Starts `vault serve` (embedded default; with ``--pg`` the metadata database and the key
store on a fresh PostgreSQL database) with one uploaded 12 MP photo, and a peer: a minimal
aiohttp app that reads the same 256 px thumbnail's AES-256-GCM ciphertext from disk and
decrypts it on every GET (the shared peers harness's ``/thumb-dec``). Both get closed-loop
load at concurrency 16 (wrk when installed, else an aiohttp client), in interleaved
rounds; the medians and their ratio are printed (aim: vault >= 0.5 x peer). Every vault
GET is authenticated, tenant-checked, checks its key row, decrypts and is durably
audited before it answers.

``--profile DIR`` also samples the vault server with py-spy during one extra round and
prints the functions holding the most samples (own time and inclusive).

``--processes 1,2`` starts one ``vault serve --processes N`` per count, on the same data,
and measures each in the same interleaved rounds (server CPU is summed over the process
tree); the ratios to the peer and to the first count are printed.

``--instructions N`` counts instead of timing: every server (the peer, each vault) runs under
valgrind's callgrind with instrumentation off; for each measurement it is switched on for
exactly N GETs at the given concurrency and the instructions executed (user space, every
thread) are read from the dump. Instructions per request do not move with the load of a
shared machine, so two code trees (``--baseline``) compare within a percent where timings
swing 1.5x; they leave out the kernel and are no wall-clock speed. Slow: each server runs
~50x slower under valgrind (``--processes 1`` only). With ``--profile DIR`` each server's
last dump is kept there, for ``callgrind_annotate``.

``--baseline DIR`` also starts each count from the code in DIR (e.g. ``git archive <commit>``
unpacked there, run with this venv), measured in the same interleaved rounds: before/after
ratios from the same minutes of a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

PY = str(ROOT / ".venv" / "bin" / "python")

PEER = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    port, enc_path, key_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    aead = AESGCM(open(key_path, "rb").read())
    async def thumb(request):
        with open(enc_path, "rb") as f:
            blob = f.read()
        return web.Response(body=aead.decrypt(blob[:12], blob[12:], b"thumb256"), content_type="image/jpeg")
    app = web.Application()
    app.router.add_get("/thumb-dec", thumb)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vault_cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([PY, "-m", "vault.cli", *args], env=env, check=True, capture_output=True, text=True).stdout


async def wait_ok(url: str, headers: dict[str, str] | None = None, *, seconds: float = 60) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(int(seconds * 10)):
            try:
                async with s.get(url, headers=headers) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def wrk_rate(url: str, headers: dict[str, str], *, secs: int, conc: int) -> tuple[float, float]:
    """(requests/s, p50 ms) from wrk; non-2xx answers fail the run."""
    cmd = ["wrk", "-t2", f"-c{conc}", f"-d{secs}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers from {url}: {out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return rate, float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan")


async def client_rate(url: str, headers: dict[str, str], *, secs: int, conc: int) -> tuple[float, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + secs
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with s.get(url, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: {r.status}")
                latencies.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
    return len(latencies) / (time.perf_counter() - t0), statistics.median(latencies) * 1000


async def client_count(url: str, headers: dict[str, str], *, n: int, conc: int) -> None:
    """Exactly ``n`` GETs over ``conc`` connections; anything but a 200 fails the run."""
    left = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with s.get(url, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url}: {r.status}")
        await asyncio.gather(*(worker() for _ in range(conc)))


CALLGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=yes"]


async def instructions(pid: int, out: Path, url: str, headers: dict[str, str], *, n: int, conc: int,
                       keep: Path | None = None) -> float:
    """Instructions per request of the callgrind-run server ``pid`` over ``n`` GETs;
    ``keep``: a folder to copy the dump to (for ``callgrind_annotate``)."""
    for dump in out.parent.glob(f"{out.name}*"):
        dump.unlink()
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
    try:
        await client_count(url, headers, n=n, conc=conc)
    finally:
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    total = 0
    for dump in out.parent.glob(f"{out.name}*"):
        if dump.name != out.name:  # the final file is written at exit; the dumps are numbered
            found = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
            total += int(found.group(1)) if found else 0
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, keep / out.name)
            dump.unlink()
    return total / n


async def rate(url: str, headers: dict[str, str], *, secs: int, conc: int) -> tuple[float, float]:
    if shutil.which("wrk"):
        return await asyncio.to_thread(wrk_rate, url, headers, secs=secs, conc=conc)
    return await client_rate(url, headers, secs=secs, conc=conc)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its threads (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads."""
    return sum(cpu_split(pid))


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and of its living descendants (the serving processes of
    ``vault serve --processes N``, the decoder workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, of in parents.items():
            if of == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0.0
    for member in tree:
        try:
            total += cpu_seconds(member)
        except (OSError, IndexError, ValueError):
            continue
    return total


def summarise_profile(raw: Path, top: int = 25) -> str:
    """py-spy ``--format raw`` (collapsed stacks) -> the functions with the most samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(([^)]*/)?([^/)]+)\)", r" (\2)", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    lines = [f"{total} samples", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def audit_summary(url: str, token: str) -> str:
    """Mean wait of a read for its durable audit entry, and entries per group commit."""
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        text = await r.text()
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(vault_audit_\w+?(?:_sum|_count))(?:\{[^}]*\})? ([\d.e+-]+)$", text, re.M)}
    try:
        wait = values["vault_audit_append_seconds_sum"] / values["vault_audit_append_seconds_count"] * 1000
        batch = values["vault_audit_commit_entries_sum"] / values["vault_audit_commit_entries_count"]
    except (KeyError, ZeroDivisionError):
        return "audit metrics: " + ", ".join(sorted(values)) or "none"
    return f"audit: mean wait for the durable entry {wait:.1f} ms, {batch:.1f} entries per group commit"


def vault_env(data_dir: Path, metrics_token: str) -> dict[str, str]:
    """The environment of the measured `vault serve`: embedded default under ``data_dir``."""
    # No job runner: the uploaded photo's full face search (seconds of CPU in a decoder
    # worker) would otherwise run during the first rounds and take a core from the reads.
    return {**os.environ, "VAULT_DATA_DIR": str(data_dir), "VAULT_LOG_LEVEL": "WARNING", "VAULT_METRICS_TOKEN": metrics_token,
            "VAULT_INPROCESS_JOBS": "false"}


async def fresh_database(pg: str, prefix: str = "bench_read_") -> tuple[str, Callable[[], Awaitable[None]]]:
    """A new database on the PostgreSQL server of ``pg``: (its URL, same driver as ``pg``;
    a coroutine function that drops it)."""
    import asyncpg  # type: ignore[import-untyped]

    name = prefix + secrets.token_hex(4)
    server_url = pg.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(server_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()

    async def dropdb() -> None:
        c = await asyncpg.connect(server_url)
        await c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await c.close()
    return pg.rsplit("/", 1)[0] + "/" + name, dropdb


def prepare_vault(env: dict[str, str]) -> tuple[str, str]:
    """Migrate, make the tenant `bench`; (a `records` token, a `practitioner` token)."""
    vault_cli(env, "migrate")
    vault_cli(env, "tenant", "create", "bench")
    token = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "records", "--label", "bench").strip().splitlines()[-1]
    writer = vault_cli(env, "token", "create", "--tenant", "bench", "--role", "practitioner", "--label", "bench-up").strip().splitlines()[-1]
    return token, writer


async def start_vault(env: dict[str, str], port: int, *, processes: int = 1, cwd: Path | None = None,
                      prefix: Sequence[str] = (), patience: float = 60) -> subprocess.Popen[bytes]:
    """`vault serve` on ``port`` (``prefix``: a command that runs it, e.g. callgrind), once it answers /healthz."""
    server = subprocess.Popen([*prefix, PY, "-m", "vault.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--processes", str(processes)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL if prefix else None, cwd=cwd)
    await wait_ok(f"http://127.0.0.1:{port}/healthz", seconds=patience)
    return server


async def upload_sample(base: str, writer: str, token: str) -> tuple[str, bytes]:
    """Upload the 12 MP sample photo as a new patient's; (its media id, its 256 px thumbnail)."""
    from bench_pipeline import sample_jpeg

    photo = sample_jpeg()
    up = {"Authorization": f"Bearer {writer}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/v1/patients", json={"external_ref": "BENCH-READ"}, headers=up) as r:
            pid = (await r.json())["id"]
        async with s.post(f"{base}/v1/patients/{pid}/media", data=io.BytesIO(photo),
                          headers={**up, "Content-Type": "image/jpeg"}) as r:
            body = await r.json()
            assert r.status == 201, body
            media_id = body["id"]
        async with s.get(f"{base}/v1/media/{media_id}/thumbnail?size=256", headers={"Authorization": f"Bearer {token}"}) as r:
            thumb = await r.read()
    return media_id, thumb


def write_peer_data(tmp: Path, thumb: bytes) -> tuple[Path, Path]:
    """The peer's files: nonce || AES-256-GCM ciphertext of ``thumb`` (AAD ``thumb256``) and its key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    (tmp / "thumb.key").write_bytes(key)
    (tmp / "thumb.enc").write_bytes(nonce + AESGCM(key).encrypt(nonce, thumb, b"thumb256"))
    return tmp / "thumb.enc", tmp / "thumb.key"


async def start_peer(port: int, enc: Path, key: Path, *, prefix: Sequence[str] = (),
                     patience: float = 60) -> subprocess.Popen[bytes]:
    """The bare aiohttp read+decrypt server (:data:`PEER`), once it answers."""
    peer = subprocess.Popen([*prefix, PY, "-c", PEER, str(port), str(enc), str(key)],
                            stderr=subprocess.DEVNULL if prefix else None)
    await wait_ok(f"http://127.0.0.1:{port}/thumb-dec", seconds=patience)
    return peer


async def count_instructions(args: argparse.Namespace, tmp: Path, peer_pid: int, peer_url: str,
                             vaults: dict[str, tuple[int, str]], auth: dict[str, str]) -> None:
    """``--instructions``: interleaved rounds of instructions per request, medians printed."""
    n = args.instructions
    peer_ir: list[float] = []
    ir: dict[str, list[float]] = {label: [] for label in vaults}
    for _ in range(args.rounds):
        peer_ir.append(await instructions(peer_pid, tmp / "cg-peer.out", peer_url, {}, n=n, conc=args.conc, keep=args.profile))
        for label, (pid, url) in vaults.items():
            ir[label].append(await instructions(pid, tmp / f"cg-{label.replace(' ', '-')}.out", url, auth, n=n, conc=args.conc,
                                                keep=args.profile))
    peer = statistics.median(peer_ir)
    result = {"backend": "postgresql" if args.pg else "sqlite", "path": args.path, "concurrency": args.conc,
              "requests_per_round": n, "rounds": args.rounds, "peer_instructions_per_req": round(peer),
              "vault_instructions_per_req": {label: round(statistics.median(v)) for label, v in ir.items()},
              "rounds_detail": {"peer": [round(x) for x in peer_ir], **{k: [round(x) for x in v] for k, v in ir.items()}}}
    print(json.dumps(result))
    for label, values in ir.items():
        mine = statistics.median(values)
        print(f"{args.path} GET c={args.conc} ({result['backend']}), vault {label}: {mine / 1000:.0f}k instructions per request,"
              f" x{mine / peer:.2f} of the aiohttp read+decrypt peer ({peer / 1000:.0f}k)")
    if args.baseline:
        now, then = statistics.median(ir["1"]), statistics.median(ir["1 baseline"])
        print(f"  this code / baseline: x{now / then:.3f} instructions per request")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=5)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--pg", help="PostgreSQL server URL (a fresh database is made on it)")
    parser.add_argument("--profile", type=Path, help="py-spy the vault during one more round; write here")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--path", default="thumbnail", choices=("thumbnail", "content"))
    parser.add_argument("--processes", default="1",
                        help="comma-separated `vault serve --processes` counts, each measured in the same rounds")
    parser.add_argument("--baseline", type=Path, help="a code tree to measure beside this one (same counts, same rounds)")
    parser.add_argument("--instructions", type=int, metavar="N",
                        help="count instructions per request over N GETs under callgrind instead of timing")
    args = parser.parse_args()
    counts_n = [int(n) for n in args.processes.split(",")]
    if args.instructions and counts_n != [1]:
        parser.error("--instructions measures --processes 1 only")
    # label -> (process count, code tree or None for this one)
    variants: dict[str, tuple[int, Path | None]] = {str(n): (n, None) for n in counts_n}
    if args.baseline:
        variants.update({f"{n} baseline": (n, args.baseline.resolve()) for n in counts_n})
    counts = list(variants)

    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-read-"))
    metrics_token = secrets.token_urlsafe(24)
    env = vault_env(tmp / "data", metrics_token)
    dropdb = None
    if args.pg:
        db_url, dropdb = await fresh_database(args.pg)
        env["VAULT_DATABASE_URL"] = env["VAULT_KEYSTORE_URL"] = db_url
    token, writer = prepare_vault(env)
    ports, pport = {n: free_port() for n in counts}, free_port()
    servers: dict[str, subprocess.Popen[bytes]] = {}
    peer = None
    port = ports[counts[0]]
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    def under(label: str) -> list[str]:  # the command prefix that runs a server
        return [*CALLGRIND, f"--callgrind-out-file={tmp / f'cg-{label}.out'}"] if args.instructions else []

    patience = 900 if args.instructions else 60
    try:
        for n in counts:  # one after the other: each start migrates the same data first
            servers[n] = await start_vault(env, ports[n], processes=variants[n][0], cwd=variants[n][1],
                                           prefix=under(n.replace(" ", "-")), patience=patience)
        server = servers[counts[0]]
        media_id, thumb = await upload_sample(base, writer, token)
        url = f"{base}/v1/media/{media_id}/thumbnail?size=256" if args.path == "thumbnail" else f"{base}/v1/media/{media_id}/content"
        enc, key = write_peer_data(tmp, thumb)
        peer = await start_peer(pport, enc, key, prefix=under("peer"), patience=patience)
        peer_url = f"http://127.0.0.1:{pport}/thumb-dec"
        urls = {n: url.replace(f":{port}/", f":{ports[n]}/") for n in counts}
        for n in counts:
            await rate(urls[n], auth, secs=1, conc=args.conc)  # warm-up
        await rate(peer_url, {}, secs=1, conc=args.conc)
        if args.instructions:
            await count_instructions(args, tmp, peer.pid, peer_url, {n: (servers[n].pid, urls[n]) for n in counts}, auth)
            return
        peer_rates, peer_p50, peer_cpu = [], [], []
        per: dict[str, dict[str, list[float]]] = {n: {"rates": [], "p50": [], "cpu": []} for n in counts}
        for _ in range(args.rounds):
            c0 = cpu_seconds(peer.pid)
            r_, p = await rate(peer_url, {}, secs=args.secs, conc=args.conc)
            peer_cpu.append((cpu_seconds(peer.pid) - c0) / (r_ * args.secs) * 1e6)
            peer_rates.append(r_)
            peer_p50.append(p)
            for n in counts:
                c0 = tree_cpu_seconds(servers[n].pid)
                r_, p = await rate(urls[n], auth, secs=args.secs, conc=args.conc)
                per[n]["cpu"].append((tree_cpu_seconds(servers[n].pid) - c0) / (r_ * args.secs) * 1e6)
                per[n]["rates"].append(r_)
                per[n]["p50"].append(p)
        vault_rates, vault_p50, vault_cpu = per[counts[0]]["rates"], per[counts[0]]["p50"], per[counts[0]]["cpu"]
        audit_line = await audit_summary(f"{base}/metrics", metrics_token)
        audit_lines = {n: await audit_summary(f"http://127.0.0.1:{ports[n]}/metrics", metrics_token) for n in counts}
        profile = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            raw = args.profile / f"read-{'pg' if args.pg else 'sqlite'}.txt"
            spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
            rec = subprocess.Popen([spy, "record", "--format", "raw", "--gil", "-r", str(args.profile_rate), "-d", str(args.secs + 1), "-o", str(raw),
                                    "-p", str(server.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await rate(url, auth, secs=args.secs, conc=args.conc)
            rec.wait()
            profile = summarise_profile(raw) if raw.exists() else "py-spy wrote nothing (ptrace not permitted?)"
    finally:
        for proc in (peer, *servers.values()):
            if proc is not None:
                proc.terminate()
                proc.wait()
        if dropdb is not None:
            await dropdb()
        shutil.rmtree(tmp, ignore_errors=True)

    v, p = statistics.median(vault_rates), statistics.median(peer_rates)
    result = {
        "backend": "postgresql" if args.pg else "sqlite", "path": args.path, "concurrency": args.conc,
        "client": "wrk" if shutil.which("wrk") else "aiohttp", "rounds": args.rounds,
        "vault_rps": round(v), "vault_p50_ms": round(statistics.median(vault_p50), 2),
        "peer_rps": round(p), "peer_p50_ms": round(statistics.median(peer_p50), 2),
        "ratio": round(v / p, 3),
        "vault_cpu_us_per_req": round(statistics.median(vault_cpu)), "peer_cpu_us_per_req": round(statistics.median(peer_cpu)), "vault_rounds": [round(x) for x in vault_rates], "peer_rounds": [round(x) for x in peer_rates],
    }
    print(json.dumps(result))
    print(f"{args.path} GET c={args.conc} ({result['backend']}): vault {v:.0f} req/s vs aiohttp read+decrypt {p:.0f} req/s"
          f" -> ratio {v / p:.2f} (aim >= 0.50); server CPU per request {statistics.median(vault_cpu):.0f} us vs"
          f" {statistics.median(peer_cpu):.0f} us")
    if len(counts) > 1:
        first = statistics.median(per[counts[0]]["rates"])
        result["processes"] = {
            str(n): {"vault_rps": round(statistics.median(per[n]["rates"])),
                     "vault_p50_ms": round(statistics.median(per[n]["p50"]), 2),
                     "ratio_to_peer": round(statistics.median(per[n]["rates"]) / p, 3),
                     "speedup": round(statistics.median(per[n]["rates"]) / first, 3),
                     "vault_cpu_us_per_req": round(statistics.median(per[n]["cpu"])),
                     "vault_rounds": [round(x) for x in per[n]["rates"]]}
            for n in counts}
        print(json.dumps(result["processes"]))
        for n in counts:
            row = result["processes"][str(n)]
            print(f"  vault serve --processes {n}: {row['vault_rps']} req/s, ratio to peer {row['ratio_to_peer']:.2f},"
                  f" x{row['speedup']:.2f} of --processes {counts[0]}, server CPU per request {row['vault_cpu_us_per_req']} us")
            print(f"    {audit_lines[n]}")
        if args.baseline:
            for n in counts_n:
                now, then = result["processes"][str(n)], result["processes"][f"{n} baseline"]
                print(f"  --processes {n}: this code / baseline: x{now['vault_rps'] / then['vault_rps']:.2f} req/s,"
                      f" CPU per request {now['vault_cpu_us_per_req']} vs {then['vault_cpu_us_per_req']} us")
    print(audit_line)
    if profile:
        print(profile)


if __name__ == "__main__":
    asyncio.run(main())
