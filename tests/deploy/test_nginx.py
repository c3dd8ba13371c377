"""deploy/nginx/vault.conf, run for real: Debian's nginx with TLS (a certificate made
here) in front of two ``vault serve`` processes on one PostgreSQL database and one blob
folder. A 20+ MB photo upload, a thumbnail and a large Range read of the decrypted original
go through it while ``inotifywait`` watches nginx's temp folders: nginx unlinks a temp file
right after creating it, so only the creation event can show that a body was spooled."""

from __future__ import annotations

import datetime
import http.client
import io
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.deploy.tools import need
from tests.support.databases import PG_ENV, fresh_database

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "nginx" / "vault.conf"
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _nginx_config(folder: Path, *, port: int, nodes: list[int], cert: Path, key: Path) -> Path:
    """The shipped example with only what is per host replaced: ports, certificate, log
    and temp paths. The [no-spool] directives and everything else stay as shipped."""
    site = EXAMPLE.read_text()
    site = re.sub(r"(?ms)^server \{\n    listen 80;.*?^\}\n", "", site)  # the plain-http redirect
    upstreams = "".join(f"    server 127.0.0.1:{n} max_fails=3 fail_timeout=10s;\n" for n in nodes)
    site, count = re.subn(r"(?m)^    server 127\.0\.0\.1:808\d [^\n]*\n(    server 127\.0\.0\.1:808\d [^\n]*\n)*", upstreams,
                          site)
    assert count == 1
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/vault/fullchain.pem": str(cert),
        "/etc/ssl/vault/privkey.pem": str(key),
        "/var/log/nginx/": f"{folder}/log/",
    }
    for old, new in replacements.items():
        assert old in site, old
        site = site.replace(old, new)
    for name in ("log", *TEMP_DIRS):
        (folder / name).mkdir()
    (folder / "site.conf").write_text(site)
    main = f"""
        # Test harness only: the site file is the example; this is what a distribution's nginx.conf provides.
        daemon off;
        master_process on;
        worker_processes 1;
        user root;
        pid {folder}/nginx.pid;
        error_log {folder}/log/main-error.log warn;
        events {{ worker_connections 64; }}
        http {{
            client_body_temp_path {folder}/client_body;
            proxy_temp_path {folder}/proxy;
            fastcgi_temp_path {folder}/fastcgi;
            uwsgi_temp_path {folder}/uwsgi;
            scgi_temp_path {folder}/scgi;
            access_log off;
            include {folder}/site.conf;
        }}
    """
    (folder / "nginx.conf").write_text(main)
    return folder / "nginx.conf"


def _big_jpeg() -> bytes:
    # Noise at quality 100 barely compresses: about 23 MB from 5.6 Mpx, quick to decode.
    pixels = np.random.default_rng(16).integers(0, 256, (2000, 2800, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=100, subsampling=0)
    return out.getvalue()


class Https:
    def __init__(self, port: int, cert: Path, token: str) -> None:
        self.context = ssl.create_default_context(cafile=str(cert))
        self.port, self.token = port, token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=180)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {self.token}", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


def _vault(env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _wait_healthy(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"vault serve on {port} exited: {proc.stderr.read() if proc.stderr else ''}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"vault serve on {port} never answered /healthz")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_nginx_streams_both_ways_through_tls_without_temp_files(tmp_path):
    nginx, inotifywait = need("nginx"), need("inotifywait")
    if not os.environ.get(PG_ENV):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{PG_ENV} is not set: CI runs this against PostgreSQL")
        pytest.skip(f"needs PostgreSQL ({PG_ENV})")

    processes: list[subprocess.Popen] = []
    with fresh_database("postgresql", tmp_path) as db:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env.update(
            VAULT_DATA_DIR=str(tmp_path / "data"), VAULT_DATABASE_URL=db.url, VAULT_KEYSTORE_URL=db.keystore_url,
            VAULT_STORAGE_URL=(tmp_path / "blobs").as_uri(), VAULT_ROOT_KEY_URL=(tmp_path / "root.key").as_uri(),
            VAULT_INPROCESS_JOBS="false", VAULT_LOG_LEVEL="WARNING", VAULT_DECODER_WORKERS="1",
        )
        _vault(env, "migrate")
        _vault(env, "tenant", "create", "proxied")
        token = _vault(env, "token", "create", "--tenant", "proxied", "--role", "practitioner",
                       "--label", "nginx test").strip().splitlines()[-1]
        reader = _vault(env, "token", "create", "--tenant", "proxied", "--role", "records",
                        "--label", "nginx test reader").strip().splitlines()[-1]
        nodes = [_free_port(), _free_port()]
        try:
            for node in nodes:
                proc = subprocess.Popen([sys.executable, "-m", "vault.cli", "serve", "--port", str(node)], env=env,
                                        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                processes.append(proc)
            for node, proc in zip(nodes, processes, strict=True):
                _wait_healthy(node, proc)

            proxy = tmp_path / "nginx"
            proxy.mkdir()
            cert, key = _certificate(proxy)
            port = _free_port()
            config = _nginx_config(proxy, port=port, nodes=nodes, cert=cert, key=key)
            check = subprocess.run([nginx, "-t", "-c", str(config)], capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, check.stderr

            watch = subprocess.Popen([inotifywait, "-m", "-r", "-e", "create", "-e", "moved_to", "--format", "%e %w%f",
                                      *(str(proxy / name) for name in TEMP_DIRS)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            processes.append(watch)
            assert watch.stderr is not None
            line = ""
            while "Watches established" not in line:
                line = watch.stderr.readline()
                assert line, "inotifywait did not start"
            server = subprocess.Popen([nginx, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            processes.append(server)
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.1)

            client, records = Https(port, cert, token), Https(port, cert, reader)
            status, _, body = client.request("POST", "/v1/patients", json.dumps({"external_ref": "PROXY-1"}).encode(),
                                             {"Content-Type": "application/json"})
            assert status == 201, body
            patient = json.loads(body)["id"]
            photo = _big_jpeg()
            assert len(photo) >= 20 * 1024 * 1024
            started = time.perf_counter()
            status, _, body = client.request("POST", f"/v1/patients/{patient}/media?phase=before", photo,
                                             {"Content-Type": "image/jpeg"})
            upload_seconds = time.perf_counter() - started
            assert status == 201, body
            media = json.loads(body)["id"]
            del photo

            status, headers, thumb = records.request("GET", f"/v1/media/{media}/thumbnail?size=1024")
            assert status == 200 and thumb[:2] == b"\xff\xd8" and headers["Content-Type"] == "image/jpeg"
            # A large Range of the decrypted original: far beyond nginx's in-memory buffers.
            status, headers, part = records.request("GET", f"/v1/media/{media}/content",
                                                    headers={"Range": "bytes=1000-16778215"})
            assert status == 206 and len(part) == 16 * 1024 * 1024, (status, len(part))
            for _ in range(4):  # spread over both nodes (least_conn)
                assert records.request("GET", "/readyz")[0] == 200

            # The watch works: a file made in a temp folder is reported.
            (proxy / "proxy" / "probe").write_bytes(b"x")
            time.sleep(0.5)
            watch.terminate()
            events = watch.communicate(timeout=10)[0].splitlines()
            assert events[-1:] == [f"CREATE {proxy / 'proxy' / 'probe'}"], events
            assert events[:-1] == [], f"nginx spooled a body to disk: {events[:-1]}"

            log = (proxy / "log" / "vault-access.log").read_text()
            assert f"/v1/media/{media}/thumbnail" in log
            assert "?" not in log and "size=1024" not in log and "phase=" not in log
            assert all(f"127.0.0.1:{node}" in log for node in nodes), log
            print(f"\nupload of 20+ MB through TLS proxy: {upload_seconds:.2f} s")
        finally:
            for proc in reversed(processes):
                _stop(proc)
