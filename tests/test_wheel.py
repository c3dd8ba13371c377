"""The vault as a container or a package installs it: deploy/install-wheel.sh (the
Dockerfile's install step) builds the wheel and puts it in a fresh virtual environment
outside the repository, which migrates (its migrations ship inside it), serves and answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_wheel_installs_migrates_and_serves(tmp_path):
    # The same script is deploy/Dockerfile's install step: what this test proves is what
    # the container image gets.
    env_dir = tmp_path / "venv"
    subprocess.run([str(ROOT / "deploy" / "install-wheel.sh"), str(env_dir), sys.executable], check=True, timeout=900,
                   cwd=tmp_path, capture_output=True)
    python = env_dir / "bin" / "python"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "PYTHON"))}
    env.update(VAULT_DATA_DIR=str(tmp_path / "data"), VAULT_LOG_LEVEL="WARNING")
    cli = [str(env_dir / "bin" / "vault")]
    # Run far from the source tree, so nothing can come from it.
    where = subprocess.run([str(python), "-c", "import vault; print(vault.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(env_dir)), where.stdout

    version = subprocess.run([*cli, "--version"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert version.stdout.startswith("vault ")
    subprocess.run([*cli, "migrate"], env=env, cwd=tmp_path, check=True, timeout=120, capture_output=True)

    port = _free_port()
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        token = None
        deadline = time.monotonic() + 120
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("vt_"):
                token = line.strip()
                break
            assert time.monotonic() < deadline
        assert token, "serve printed no first-start token"
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/readyz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the installed vault never answered"
                time.sleep(0.2)
        assert body["checks"]["schema"] == "ok", body
        status, body = _get(
            f"http://127.0.0.1:{port}/v1/patients",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            data=json.dumps({"external_ref": "WHEEL-1"}).encode(),
        )
        assert status == 201, body
    finally:
        server.terminate()
        server.wait(timeout=60)
        if server.stdout:
            server.stdout.close()
