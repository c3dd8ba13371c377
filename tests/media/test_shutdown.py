"""SIGTERM stops a real ``vault serve`` within 30 s while slow uploads (photos and a video,
sent a few KiB at a time) are in flight, and nothing half-written becomes a ready media
row: after a restart on the same data only the uploads that completed are there."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline.samples import picture
from tests.pipeline.videos import make_video

STOP_BOUND_S = 30.0  # the requirement itself
CHUNK = 8 << 10
PAUSE_S = 0.2  # well inside the body timeout (64 KiB per 20 s)


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    # These uploads never send their last bytes: the drain gives up after 2 s and cancels them
    # (tests/system/test_graceful_shutdown.py shows an upload in flight finishing instead).
    env.update(VAULT_DATA_DIR=str(data), VAULT_LOG_LEVEL="INFO", VAULT_DECODER_WORKERS="2", VAULT_SHUTDOWN_TIMEOUT="2")
    return env


def _vault(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], folder: Path, name: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"{name}.log"
        with open(self.log, "wb") as out:  # a file, not a pipe: a full pipe would block the server
            self.proc = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--port", str(self.port)],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("vault serve did not answer /healthz: " + self.log.read_text())

    def call(self, method: str, path: str, token: str, body: bytes | None = None,
             content_type: str = "application/json") -> dict:
        req = urllib.request.Request(self.base + path, data=body, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)


class SlowUpload(threading.Thread):
    """A client sending an upload a few KiB at a time, and never its last chunk."""

    def __init__(self, port: int, path: str, token: str, mime: str, body: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.token, self.mime, self.body = port, path, token, mime, body
        self.flowing = threading.Event()  # the server has taken a few chunks
        self.done = threading.Event()
        self.stop = threading.Event()
        self.answer = b""

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
                head = (f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                        f"Content-Type: {self.mime}\r\nContent-Length: {len(self.body)}\r\n\r\n")
                sock.sendall(head.encode())
                sent = 0
                while sent + CHUNK < len(self.body) and not self.stop.is_set():
                    sock.sendall(self.body[sent:sent + CHUNK])
                    sent += CHUNK
                    if sent >= 3 * CHUNK:
                        self.flowing.set()
                    self.stop.wait(PAUSE_S)
                sock.settimeout(5)
                self.answer = sock.recv(4096)  # whatever the server said as it went (or b"")
        except OSError:
            pass  # the server closed the connection: expected when it stops
        finally:
            self.flowing.set()
            self.done.set()


def _photo(seed: int) -> bytes:
    out = io.BytesIO()
    picture(1600, 1200, seed=seed).save(out, "JPEG", quality=95)
    return out.getvalue()


def _media_rows(data: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data / "vault.sqlite3") as db:
        return sorted(db.execute("SELECT id, status FROM media").fetchall())


def test_sigterm_stops_serve_within_30s_with_uploads_in_flight(tmp_path):
    data = tmp_path / "data"
    env = _env(data)
    _vault("migrate", env=env)
    _vault("tenant", "create", "north", env=env)
    tokens = [_vault("token", "create", "--tenant", "north", "--role", "practitioner", "--label", f"camera {i}",
                     env=env).strip().splitlines()[-1] for i in range(2)]
    video = make_video(seconds=4, fmt="mp4")
    assert len(video) > 8 * CHUNK

    server = Server(env, tmp_path, "first")
    uploads: list[SlowUpload] = []
    try:
        patient = server.call("POST", "/v1/patients", tokens[0], json.dumps({"external_ref": "MRN-7"}).encode())["id"]
        path = f"/v1/patients/{patient}/media?phase=before"
        complete = server.call("POST", path, tokens[0], _photo(1), "image/jpeg")
        assert complete["status"] == "ready"

        bodies = [("image/jpeg", _photo(2)), ("image/jpeg", _photo(3)), ("image/jpeg", _photo(4)),
                  ("video/mp4", video)]
        uploads = [SlowUpload(server.port, path, tokens[i % 2], mime, body) for i, (mime, body) in enumerate(bodies)]
        for upload in uploads:
            upload.start()
        for upload in uploads:
            assert upload.flowing.wait(60)
        assert not any(u.done.is_set() for u in uploads), [u.answer for u in uploads]  # all four in flight

        server.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        try:
            code = server.proc.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"vault serve still running {STOP_BOUND_S:.0f} s after SIGTERM:\n" + server.log.read_text()[-4000:])
        stopped_in = time.monotonic() - began
        assert code == 0, server.log.read_text()[-4000:]
    finally:
        for upload in uploads:
            upload.stop.set()
        server.stop()
    for upload in uploads:
        assert upload.done.wait(60)
        assert b" 201 " not in upload.answer.split(b"\r\n", 1)[0]  # no half-sent upload was accepted

    # The same data, a new process: only what completed is there, and it is whole.
    assert _media_rows(data) == [(complete["id"], "ready")]
    again = Server(env, tmp_path, "second")
    try:
        listed = again.call("GET", f"/v1/patients/{patient}/media", tokens[0])["items"]
        assert [(m["id"], m["status"]) for m in listed] == [(complete["id"], "ready")]
        req = urllib.request.Request(f"{again.base}/v1/media/{complete['id']}/content",
                                     headers={"Authorization": f"Bearer {tokens[0]}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.read()[:2] == b"\xff\xd8"
    finally:
        again.proc.send_signal(signal.SIGTERM)
        try:
            again.proc.wait(STOP_BOUND_S)
        finally:
            again.stop()
    print(f"stopped {stopped_in:.1f} s after SIGTERM")
