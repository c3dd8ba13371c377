"""Real processes for the multi-node suite: ``vault serve`` nodes and a ``vault worker`` on
one PostgreSQL database, blobs on moto's S3 server, root keys on moto's KMS — the
production shape, on loopback. Plain ``urllib``/``http.client`` clients, so what is
measured is the nodes, not a client library's pool."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STOP_BOUND_S = 30.0  # a node must be gone this long after SIGTERM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(tmp: Path, *, database_url: str, moto, metrics_token: str) -> dict[str, str]:
    bucket = "vault-" + secrets.token_hex(4)
    moto.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto.region})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "AWS_"))}
    env.update(
        AWS_ACCESS_KEY_ID=moto.access_key, AWS_SECRET_ACCESS_KEY=moto.secret_key,
        VAULT_ENV="production", VAULT_DATA_DIR=str(tmp / "data"),
        VAULT_DATABASE_URL=database_url, VAULT_KEYSTORE_URL=database_url,
        VAULT_STORAGE_URL=f"s3://{bucket}/vault?endpoint_url={moto.url}&region={moto.region}",
        VAULT_ROOT_KEY_URL=f"aws-kms://alias/mn{secrets.token_hex(4)}?region={moto.region}&endpoint_url={moto.url}",
        VAULT_INPROCESS_JOBS="false", VAULT_LOG_LEVEL="INFO", VAULT_DECODER_WORKERS="1",
        VAULT_METRICS_TOKEN=metrics_token, VAULT_JOB_POLL_MS="200",
        # Long enough that no entry expires during the suite: only eviction can drop one.
        VAULT_KEY_CACHE_SECONDS="600",
    )
    return env


def vault(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    if check:
        assert proc.returncode == 0, f"vault {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


@dataclass
class Node:
    """A ``vault serve`` process on a fixed port (a restart comes back on the same one)."""

    env: dict[str, str]
    folder: Path
    name: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "wb") as out:  # a file, not a pipe: a full pipe would stall the node
            self.proc = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--port", str(self.port)],
                                         env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{self.name} never answered /healthz: {self.tail()}")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_BOUND_S) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {timeout:.0f} s after SIGTERM: {self.tail()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- requests ----------------------------------------------------------------------
    def request(self, method: str, path: str, token: str | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
        """(status, body); connection errors raise OSError."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            all_headers = dict(headers or {})
            if token:
                all_headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, token: str, payload: dict | None = None) -> tuple[int, dict]:
        body = json.dumps(payload).encode() if payload is not None else None
        status, raw = self.request(method, path, token, body, {"Content-Type": "application/json"} if body else None)
        return status, json.loads(raw) if raw else {}

    def metric(self, name: str, token: str, labels: str = "") -> float:
        status, raw = self.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert status == 200, raw[:200]
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in raw.decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{wanted} not in /metrics")


class Worker:
    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.log = folder / "worker.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vault.cli", "worker", "--concurrency", "2"],
                                         env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    import io

    from tests.pipeline.samples import picture

    out = io.BytesIO()
    picture(*size, seed=seed).save(out, "JPEG", quality=90)
    return out.getvalue()


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine,
                            urllib.error.URLError, OSError))
