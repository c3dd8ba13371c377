"""A started `vault serve` has not loaded the decoders' heavy libraries: OpenCV, PyAV and
NumPy belong in the decoder worker processes (start-up memory, issue 15 item 4) — neither
at start nor after a photo upload and its face search, whose results the server re-checks
as plain data."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.databases import backends, fresh_database

HEAVY = ("cv2", "av", "numpy", "pillow_heif")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loaded(pid: int) -> set[str]:
    """Which heavy packages have a shared object mapped into the process."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in HEAVY if f"/site-packages/{name}/" in maps or f"/site-packages/{name}.libs/" in maps}


def _call(url: str, token: str, body: bytes | None = None, content_type: str = "application/json") -> dict:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def _photo() -> bytes:
    from tests.pipeline.samples import jpeg_with_everything

    return jpeg_with_everything(orientation=6)


def _upload_and_search(base: str, token: str) -> None:
    """One photo upload, then its full face search (an in-process job) to the end."""
    patient = _call(f"{base}/v1/patients", token, json.dumps({"external_ref": "IMPORTS-1"}).encode())
    media = _call(f"{base}/v1/patients/{patient['id']}/media?phase=before", token, _photo(), "image/jpeg")
    deadline = time.monotonic() + 120
    while _call(f"{base}/v1/media/{media['id']}", token)["faces"]["state"] == "pending":
        assert time.monotonic() < deadline, "the face search job did not run"
        time.sleep(0.2)


def test_a_started_server_has_not_loaded_opencv_pyav_or_numpy_even_after_a_photo(tmp_path):
    env = {**os.environ, "VAULT_DATA_DIR": str(tmp_path / "data"), "VAULT_ROOT_KEY_URL": (tmp_path / "keyring").as_uri(),
           "VAULT_LOG_LEVEL": "WARNING"}
    for name in [k for k in env if k in ("VAULT_DATABASE_URL", "VAULT_KEYSTORE_URL", "VAULT_STORAGE_URL")]:
        del env[name]

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, check=True, capture_output=True,
                              text=True, timeout=120).stdout

    cli("migrate")
    cli("tenant", "create", "imports")
    token = cli("token", "create", "--tenant", "imports", "--role", "practitioner", "--label", "imports").strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(server, port, 60, lambda: "")
        assert _loaded(server.pid) == set()
        _upload_and_search(f"http://127.0.0.1:{port}", token)
        assert _loaded(server.pid) == set()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_ready(server: subprocess.Popen, port: int, timeout: float, detail: Callable[[], str]) -> None:
    """Until `vault serve` on ``port`` answers /readyz with 200; ``detail()`` goes into the
    message if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None, f"vault serve exited: {detail()}"
        assert time.monotonic() < deadline, "vault serve did not become ready"
        time.sleep(0.2)


# Pure-Python packages the server needs only for rare work: Alembic and Mako (migrations,
# run in a `vault migrate` child when the schema is behind), boto3 (an s3:// blob store),
# stream_zip (exports) and segno (a staff member's TOTP enrolment QR code).
LAZY = ("alembic", "mako", "boto3", "botocore", "stream_zip", "segno")


def _imported(log: Path) -> set[str]:
    """Top-level packages in ``python -X importtime``'s report (stderr)."""
    found = set()
    for line in log.read_text().splitlines():
        if line.startswith("import time:") and "|" in line:
            found.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return found


def _serve_once(env: dict[str, str], log: Path) -> tuple[str, set[str]]:
    """Start `vault serve` until /readyz answers 200, stop it: (its stdout, packages it imported)."""
    port = _free_port()
    with log.open("w") as err:
        server = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "vault.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            _wait_ready(server, port, 120, lambda: log.read_text()[-2000:])
            imported = _imported(log)
        finally:
            server.terminate()
            out, _ = server.communicate(timeout=30)
    return out, imported


@pytest.mark.parametrize("backend", backends())
def test_serve_migrates_first_start_and_upgrade_without_loading_alembic_and_rare_packages(backend, tmp_path):
    """A first start migrates and prints the token, a restart at head reads two version
    tables only, an upgrade (the schema behind this code) migrates again: each time the
    serving process itself never imports Alembic (the migrations run in a `vault migrate`
    child, only when needed) nor the packages of rare routes."""
    from vault.migrate import alembic_config
    from vault.migrate import schema_status as alembic_schema_status

    with fresh_database(backend, tmp_path) as db:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env.update(VAULT_DATA_DIR=str(tmp_path / "data"), VAULT_ROOT_KEY_URL=(tmp_path / "keyring").as_uri(),
                   VAULT_LOG_LEVEL="WARNING")
        if backend == "postgresql":
            env.update(VAULT_DATABASE_URL=db.url, VAULT_KEYSTORE_URL=db.keystore_url)
        url = env.get("VAULT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'data' / 'vault.sqlite3'}")

        out, imported = _serve_once(env, tmp_path / "first.log")
        assert "first start: created tenant 'demo'" in out and any(line.startswith("vt_") for line in out.splitlines())
        assert imported & set(LAZY) == set() and "vault" in imported

        out, imported = _serve_once(env, tmp_path / "restart.log")
        assert "first start" not in out and "listening on" in out
        assert imported & set(LAZY) == set()

        # an upgrade: the metadata database one migration behind this code
        from alembic import command

        command.downgrade(alembic_config(url), "0021")
        out, imported = _serve_once(env, tmp_path / "upgrade.log")
        assert "first start" not in out and imported & set(LAZY) == set()

        async def state() -> str:
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(url)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(alembic_schema_status)
            finally:
                await engine.dispose()

        assert asyncio.run(state()) == "current"
