"""`vault serve` start-up: resident memory once it is ready, and the time until it is.

    .venv/bin/python bench/bench_startup.py [--rounds 5] [--against DIR]

Starts `vault serve` on the embedded default (SQLite, local blobs, in-process jobs; YuNet
when ../shared/models has it, as bench_ingest.py does) from a fresh data folder (a first
start: it migrates, creates the tenant ``demo`` and prints a token), stops it, and starts
it again on the same folder (a restart). For each: seconds from spawn until ``/readyz``
answers 200, and the server's VmRSS 2 s later (as bench_ingest.py's ``rss_start``).
``--against DIR`` names another checkout (e.g. ``git worktree add /tmp/old <commit>``): its
code runs with this checkout's virtual environment, interleaved with this one round by
round, and the ratios this / other are printed (medians, same run).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
MODEL = ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(tree: Path, folder: Path) -> tuple[float, float, str]:
    """(seconds until /readyz answered 200, RSS MiB 2 s later, stdout) of one `vault serve`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(folder / "data"), VAULT_ROOT_KEY_URL=(folder / "keyring").as_uri(),
               VAULT_LOG_LEVEL="WARNING", PYTHONPATH=str(tree))  # that checkout's code, this venv's libraries
    if MODEL.is_file():
        env["VAULT_FACE_MODEL"] = str(MODEL)
    port = free_port()
    began = time.perf_counter()
    server = subprocess.Popen([PY, "-m", "vault.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tree,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"vault serve ({tree}) exited with {server.returncode}")
            if time.perf_counter() - began > 300:
                raise SystemExit(f"vault serve ({tree}) not ready in 300 s")
            time.sleep(0.05)
        ready = time.perf_counter() - began
        time.sleep(2)
        rss = rss_mib(server.pid)
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    return ready, rss, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout to run interleaved (the 'before')")
    args = parser.parse_args()
    trees = {"this": ROOT}
    if args.against:
        trees["other"] = args.against.resolve()
    found: dict[str, dict[str, list[float]]] = {
        name: {"first_s": [], "first_mib": [], "restart_s": [], "restart_mib": []} for name in trees}
    print(f"load average before: {os.getloadavg()}", flush=True)
    for _ in range(args.rounds):
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory(prefix="vault-bench-startup-") as folder:
                seconds, mib, out = start(tree, Path(folder))
                assert "first start: created tenant 'demo'" in out, out
                found[name]["first_s"].append(seconds)
                found[name]["first_mib"].append(mib)
                seconds, mib, out = start(tree, Path(folder))
                assert "first start" not in out, out
                found[name]["restart_s"].append(seconds)
                found[name]["restart_mib"].append(mib)
    print(f"load average after: {os.getloadavg()}")
    med = statistics.median
    for name, tree in trees.items():
        row = found[name]
        print(f"{name} ({tree}), medians of {args.rounds}: first start {med(row['first_s']):.2f} s, "
              f"{med(row['first_mib']):.1f} MiB; restart {med(row['restart_s']):.2f} s, {med(row['restart_mib']):.1f} MiB")
        print("   RSS first  " + " ".join(f"{x:.1f}" for x in row["first_mib"]))
        print("   RSS restart " + " ".join(f"{x:.1f}" for x in row["restart_mib"]))
    if "other" in found:
        for key in ("first_mib", "restart_mib", "first_s", "restart_s"):
            print(f"this / other, {key}: {med(found['this'][key]) / med(found['other'][key]):.2f}")


if __name__ == "__main__":
    sys.exit(main())
