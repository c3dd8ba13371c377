"""The floor of an audited read in this stack: the bare peer, the cheapest server that keeps
the vault's read invariants, and the vault, in the same interleaved rounds.

    .venv/bin/python bench/bench_read_floor.py [--rounds 3] [--secs 5] [--conc 16]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--no-vault] [--profile DIR]

Issue 15 item 1 asks the vault's audited thumbnail GET for half the requests/s of a bare
aiohttp server that reads the ~30 KB ciphertext from disk and decrypts it (bench_read.py's
``PEER``). This measures what the cheapest server keeping the invariants reaches:
``bench/read_floor_server.py`` (token hash in a dict, cached tenant check, the key row read
on every request, the key kept once unwrapped, a durable hash-chained audit entry
group-committed before the answer, read + decrypt). The data (a real upload to the vault,
its 256 px thumbnail, the peer's ciphertext) is prepared by bench_read.py's functions.

With ``--pg`` (a fresh database is made and dropped) the vault keeps its metadata and key
store there and the floor its tables in schema ``floor``; the floor is then measured twice,
with the audit batch as ``executemany`` in one transaction and as one ``INSERT ... SELECT
FROM unnest(...)`` statement in autocommit (what the vault's writer does). After the
rounds each floor's audit chain is read back and verified (every hash recomputed from
``json.dumps(sort_keys=True)``), and its entries per group commit counted.

CPU per read is the server process's (all its threads) from /proc, not the database
server's. ``--profile DIR`` samples the floor with py-spy (``--gil``) during one more round.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_read import (
    PY,
    ROOT,
    cpu_seconds,
    cpu_split,
    free_port,
    fresh_database,
    prepare_vault,
    rate,
    start_peer,
    start_vault,
    summarise_profile,
    tree_cpu_seconds,
    upload_sample,
    vault_env,
    wait_ok,
    write_peer_data,
)

FLOOR = str(ROOT / "bench" / "read_floor_server.py")


def floor_config(tmp: Path, label: str, *, media_id: str, enc: Path, key: Path, pg_dsn: str | None,
                 pg_audit: str, hold: bool, durable: bool) -> tuple[Path, str, int]:
    """The floor's config file (its token only as a hash); (the file, the token, the port)."""
    from vault.db.engine import (
        SQLITE_PRAGMAS,  # the vault's own pragmas (WAL, synchronous=FULL)
    )

    token, port = secrets.token_urlsafe(32), free_port()
    folder = tmp / label
    folder.mkdir()
    cfg = {
        "port": port, "tenant_id": secrets.token_hex(16), "patient_id": secrets.token_hex(16), "media_id": media_id,
        "blob_id": secrets.token_hex(16), "blob_path": str(enc), "key_path": str(key), "kek_hex": os.urandom(32).hex(),
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "token_id": secrets.token_hex(8), "role": "records",
        "sqlite_pragmas": list(SQLITE_PRAGMAS), "sqlite_dir": str(folder), "pg_dsn": pg_dsn, "pg_audit": pg_audit,
        "hold": hold, "durable": durable,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path, token, port


def verify_chain(rows: list[tuple[Any, ...]]) -> tuple[int, float]:
    """Recompute every hash of one tenant's chain (rows in seq order, ENTRY_COLUMNS);
    (entries, entries per group commit: a commit's entries share one timestamp)."""
    prev, seq, stamps = None, 0, set()
    for tenant_id, s, at, actor, role, action, targets, outcome, request_id, prev_hash, digest in rows:
        at = at if isinstance(at, datetime) else datetime.fromisoformat(at)
        body = json.dumps({"tenant_id": tenant_id, "seq": s, "at": at.isoformat(), "actor": actor, "role": role,
                           "action": action, "targets": targets, "outcome": outcome, "request_id": request_id},
                          sort_keys=True, separators=(",", ":")).encode()
        if s != seq + 1 or (prev is not None and prev_hash != prev) or hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest() != digest:
            raise AssertionError(f"floor audit chain broken at seq {s}")
        prev, seq = digest, s
        stamps.add(at)
    return seq, seq / max(len(stamps), 1)


async def floor_audit(folder: Path, pg_dsn: str | None) -> tuple[int, float]:
    """Verify the chain the floor of ``folder`` wrote; (entries, entries per commit)."""
    tenant_id = json.loads((folder / "config.json").read_text())["tenant_id"]
    columns = "tenant_id, seq, at, actor, role, action, targets, outcome, request_id, prev_hash, hash"
    if pg_dsn is None:
        with sqlite3.connect(folder / "floor-audit.db") as conn:
            return verify_chain(conn.execute(f"SELECT {columns} FROM audit_entries WHERE tenant_id = ? ORDER BY seq",
                                             (tenant_id,)).fetchall())
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(pg_dsn)
    try:
        return verify_chain([tuple(r) for r in await conn.fetch(f"SELECT {columns} FROM floor.audit_entries WHERE tenant_id = $1 ORDER BY seq", tenant_id)])
    finally:
        await conn.close()


async def commit_ms(tmp: Path, pg_dsn: str | None, n: int = 100) -> float:
    """Median latency of one durable one-row commit on this disk, as the floor commits (ms):
    with c readers all waiting on the audit, c / this bounds the requests/s of any server."""
    import time

    from vault.db.engine import SQLITE_PRAGMAS

    times = []
    if pg_dsn is None:
        conn = sqlite3.connect(tmp / "commit-probe.db", isolation_level=None)
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        conn.execute("CREATE TABLE IF NOT EXISTS probe (x text)")
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO probe VALUES (?)", ("x" * 300,))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - t0)
        conn.close()
    else:
        import asyncpg  # type: ignore[import-untyped]

        pconn = await asyncpg.connect(pg_dsn)
        await pconn.execute("CREATE TABLE IF NOT EXISTS floor_probe (x text)")
        for _ in range(n):
            t0 = time.perf_counter()
            await pconn.execute("INSERT INTO floor_probe VALUES ($1)", "x" * 300)
            times.append(time.perf_counter() - t0)
        await pconn.close()
    return statistics.median(times) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=5)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--pg", help="PostgreSQL server URL (a fresh database is made on it and dropped)")
    parser.add_argument("--no-vault", action="store_true", help="measure the peer and the floor only")
    parser.add_argument("--no-hold-too", action="store_true",
                        help="also a floor whose group commit is never held for the readers it released")
    parser.add_argument("--nosync-too", action="store_true",
                        help="also a floor whose audit commits do not wait for the disk (breaks invariant 4: a reference"
                             " that shows what the durable commit's latency costs)")
    parser.add_argument("--profile", type=Path, help="py-spy the floor during one more round; write here")
    parser.add_argument("--profile-rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-floor-"))
    env = vault_env(tmp / "data", secrets.token_urlsafe(24))
    dropdb, pg_dsn = None, None
    if args.pg:
        db_url, dropdb = await fresh_database(args.pg.replace("postgresql://", "postgresql+asyncpg://"), prefix="bench_floor_")
        env["VAULT_DATABASE_URL"] = env["VAULT_KEYSTORE_URL"] = db_url
        pg_dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    folders: dict[str, Path] = {}
    try:
        token, writer = prepare_vault(env)
        vport = free_port()
        vault = await start_vault(env, vport)
        media_id, thumb = await upload_sample(f"http://127.0.0.1:{vport}", writer, token)
        enc, key = write_peer_data(tmp, thumb)
        pport = free_port()
        procs["peer"] = await start_peer(pport, enc, key)
        targets: dict[str, tuple[str, dict[str, str]]] = {"peer": (f"http://127.0.0.1:{pport}/thumb-dec", {})}
        # label -> (PostgreSQL audit statement, commit hold, durable commits)
        variants = {"floor": ("", True, True)} if pg_dsn is None else {
            "floor (executemany, transaction)": ("executemany", True, True), "floor (one statement)": ("unnest", True, True)}
        last = list(variants.values())[-1][0]
        if args.no_hold_too:
            variants["floor, no commit hold"] = (last, False, True)
        if args.nosync_too:
            variants["floor, NOT durable (reference)"] = (last, True, False)
        floors = list(variants)
        for label, (pg_audit, hold, durable) in variants.items():
            cfg, ftoken, fport = floor_config(tmp, f"floor{len(folders)}", media_id=media_id, enc=enc, key=key, pg_dsn=pg_dsn,
                                              pg_audit=pg_audit, hold=hold, durable=durable)
            folders[label] = cfg.parent
            procs[label] = subprocess.Popen([PY, FLOOR, str(cfg)])
            furl, fauth = f"http://127.0.0.1:{fport}/v1/media/{media_id}/thumbnail?size=256", {"Authorization": f"Bearer {ftoken}"}
            await wait_ok(furl, fauth)
            targets[label] = (furl, fauth)
        if args.no_vault:
            vault.terminate()
            vault.wait()
        else:
            procs["vault"] = vault
            targets["vault"] = (f"http://127.0.0.1:{vport}/v1/media/{media_id}/thumbnail?size=256", {"Authorization": f"Bearer {token}"})
        for url, headers in targets.values():
            await rate(url, headers, secs=1, conc=args.conc)  # warm-up
        per: dict[str, dict[str, list[float]]] = {n: {"rps": [], "p50": [], "cpu": [], "sys": []} for n in targets}
        commits: list[float] = []
        for _ in range(args.rounds):
            commits.append(await commit_ms(tmp, pg_dsn))
            for name, (url, headers) in targets.items():
                cpu = tree_cpu_seconds if name == "vault" else cpu_seconds
                c0, s0 = cpu(procs[name].pid), cpu_split(procs[name].pid)[1]
                rps, p50 = await rate(url, headers, secs=args.secs, conc=args.conc)
                per[name]["cpu"].append((cpu(procs[name].pid) - c0) / (rps * args.secs) * 1e6)
                per[name]["sys"].append((cpu_split(procs[name].pid)[1] - s0) / (rps * args.secs) * 1e6)  # kernel: sockets, fsync
                per[name]["rps"].append(rps)
                per[name]["p50"].append(p50)
        profile = None
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            raw = args.profile / f"floor-{'pg' if pg_dsn else 'sqlite'}.txt"
            rec = subprocess.Popen([args.py_spy, "record", "--format", "raw", "--gil", "-r", str(args.profile_rate), "-d", str(args.secs + 1),
                                    "-o", str(raw), "-p", str(procs[floors[0 if pg_dsn is None else 1]].pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await rate(*targets[floors[0 if pg_dsn is None else 1]], secs=args.secs, conc=args.conc)
            rec.wait()
            profile = summarise_profile(raw, top=40) if raw.exists() else "py-spy wrote nothing (ptrace not permitted?)"
        for proc in procs.values():
            proc.terminate()
            proc.wait()
        audits = {label: await floor_audit(folders[label], pg_dsn) for label in floors}
        stats = {label: json.loads((folders[label] / "stats.json").read_text()) for label in floors}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
        if dropdb is not None:
            await dropdb()
        shutil.rmtree(tmp, ignore_errors=True)

    peer = statistics.median(per["peer"]["rps"])
    result: dict[str, Any] = {"backend": "postgresql" if pg_dsn else "sqlite", "concurrency": args.conc, "rounds": args.rounds,
                              "secs": args.secs, "load": os.getloadavg()[0],
                              "durable_commit_ms": round(statistics.median(commits), 2), "servers": {}}
    for name, m in per.items():
        result["servers"][name] = {"rps": round(statistics.median(m["rps"])), "ratio": round(statistics.median(m["rps"]) / peer, 3),
                                   "cpu_us_per_req": round(statistics.median(m["cpu"])),
                                   "sys_us_per_req": round(statistics.median(m["sys"])), "p50_ms": round(statistics.median(m["p50"]), 2),
                                   "rounds": [round(x) for x in m["rps"]]}
    for label, (entries, per_commit) in audits.items():
        result["servers"][label].update(audit_entries_verified=entries, entries_per_commit=round(per_commit, 1),
                                        commit_ms=round(stats[label]["commit_ms"], 2))
    print(json.dumps(result))
    print(f"thumbnail GET c={args.conc} ({result['backend']}), medians of {args.rounds} interleaved rounds of {args.secs} s:")
    for name, row in result["servers"].items():
        extra = (f", {row['entries_per_commit']} entries/commit of {row['commit_ms']} ms ({row['audit_entries_verified']} verified)"
                 if name in audits else "")
        print(f"  {name:34s} {row['rps']:6d} req/s  ratio {row['ratio']:.2f}  CPU/read {row['cpu_us_per_req']:4d} us (system {row['sys_us_per_req']:3d})"
              f"  p50 {row['p50_ms']} ms{extra}")
    commit = result["durable_commit_ms"]
    print(f"  one durable commit (idle server, same minutes): {commit} ms -> {args.conc} readers waiting on commits"
          f" of that length bound any audited server near {args.conc / commit * 1000:.0f} req/s"
          f" ({args.conc / commit * 1000 / peer:.2f} x peer)")
    if profile:
        print(profile)


if __name__ == "__main__":
    asyncio.run(main())
