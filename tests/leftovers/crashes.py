"""Helpers of the fault-injection test: real ``vault serve`` / ``vault worker``
processes on the test's database and data folder, killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_of(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(
        VAULT_DATA_DIR=str(settings.data_dir), VAULT_DATABASE_URL=settings.database_url,
        VAULT_KEYSTORE_URL=settings.keystore_url, VAULT_STORAGE_URL=settings.storage_url,
        VAULT_ROOT_KEY_URL=settings.root_key_url, VAULT_LOG_LEVEL="ERROR",
        VAULT_JOB_LEASE_SECONDS="2", VAULT_JOB_POLL_MS="50", VAULT_BLOB_LEASE_SECONDS="1",
        VAULT_LEFTOVER_GRACE_SECONDS="1", VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK="true",
        # `vault serve` runs the jobs itself on both backends (on PostgreSQL it would not by
        # default); a test that kills a separate `vault worker` turns this off.
        VAULT_INPROCESS_JOBS="true",
    )
    env.update(extra)
    return env


class Process:
    """One vault process; ``kill()`` is kill -9."""

    def __init__(self, settings, log: Path, *args: str, **env: str) -> None:
        self.args, self.env, self.log = args, env_of(settings, **env), log
        self.proc: asyncio.subprocess.Process | None = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    async def start(self) -> Process:
        args = [a.replace("{port}", str(self.port)) for a in self.args]
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vault.cli", *args, cwd=ROOT, env=self.env,
                stdout=asyncio.subprocess.DEVNULL, stderr=log)
        if args[0] == "serve":
            async with aiohttp.ClientSession() as http:
                for _ in range(600):
                    try:
                        async with http.get(self.base + "/healthz") as resp:
                            if resp.status == 200:
                                return self
                    except aiohttp.ClientError:
                        pass
                    assert self.proc.returncode is None, self.log.read_text()[-2000:]
                    await asyncio.sleep(0.05)
            raise AssertionError("vault serve did not start")
        return self

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        assert self.proc.returncode == -signal.SIGKILL


async def until(predicate, *, timeout: float = 60.0, every: float = 0.01) -> bool:
    """Poll ``predicate()`` (async) until true; False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(every)
    return False


async def stalled_body(data: bytes, *, send: int, chunk: int = 64 * 1024):
    """The first ``send`` bytes, then silence (clinic Wi-Fi going quiet)."""
    for i in range(0, send, chunk):
        yield data[i:min(i + chunk, send)]
        await asyncio.sleep(0.01)
    await asyncio.sleep(3600)
