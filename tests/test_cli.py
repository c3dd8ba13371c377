"""The CLI as an operator runs it: real processes, real files."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import json
import socket
import urllib.parse
from pathlib import Path



def _env(tmp_path, migrated_db=None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_DATA_DIR"] = str(tmp_path / "data")
    env["VAULT_LOG_LEVEL"] = "INFO"
    return env


def vault(*args, env, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tokens_and_audit_verify_from_the_cli(tmp_path):
    env = _env(tmp_path)
    vault("migrate", env=env)
    assert "created" in vault("tenant", "create", "north", env=env).stdout
    out = vault("token", "create", "--tenant", "north", "--role", "dpo", "--label", "Dr Who", env=env).stdout
    token = out.strip().splitlines()[-1]
    assert re.fullmatch(r"vt_[A-Za-z0-9_-]{43}", token)
    listing = vault("token", "list", "--tenant", "north", env=env).stdout
    assert "Dr Who" in listing and token not in listing
    token_id = listing.split()[0]
    assert vault("audit", "verify", env=env).stdout.startswith("north: intact")
    vault("token", "revoke", token_id, env=env)
    assert "revoked" in vault("token", "list", env=env).stdout
    bad = vault("token", "create", "--tenant", "north", "--role", "janitor", "--label", "x", env=env, check=False)
    assert bad.returncode != 0 and "role must be one of" in bad.stderr

    # tamper with the chain directly in the SQLite file: verify names the entry
    import sqlite3

    con = sqlite3.connect(tmp_path / "data" / "vault.sqlite3")
    con.execute("UPDATE audit_entries SET action = 'nothing' WHERE seq = 2")
    con.commit()
    con.close()
    broken = vault("audit", "verify", "--tenant", "north", env=env, check=False)
    assert broken.returncode == 1 and "BROKEN at entry 2" in broken.stdout


def test_invalid_configuration_fails_naming_the_setting(tmp_path):
    env = {**_env(tmp_path), "VAULT_ENV": "production"}
    proc = vault("migrate", env=env, check=False)
    assert proc.returncode == 2 and "VAULT_ROOT_KEY_URL" in proc.stderr


def test_serve_first_start_prints_a_token_that_works(tmp_path):
    env = _env(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vault.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("vt_"):
                break
        token = lines[-1]
        assert token.startswith("vt_"), lines
        assert any(f"http://127.0.0.1:{port}" in l for l in lines)
        # The root keyring is printed, private, and outside the data folder.
        (printed,) = [l for l in lines if l.startswith("root keyring: file://")]
        keyring = Path(urllib.parse.unquote(urllib.parse.urlsplit(printed.split()[2]).path))
        assert oct(keyring.stat().st_mode & 0o777) == "0o700"
        assert not keyring.is_relative_to(tmp_path / "data") and not (tmp_path / "data" / "root.key").exists()
        keys = [path for path in keyring.iterdir() if path.is_file() and path.stat().st_size]
        assert keys and all(oct(path.stat().st_mode & 0o777) == "0o600" for path in keys)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        req = urllib.request.Request(
            base + "/v1/patients", data=json.dumps({"external_ref": "MRN-1"}).encode(), method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        created = json.load(urllib.request.urlopen(req, timeout=10))
        req = urllib.request.Request(base + f"/v1/patients/{created['id']}", headers={"Authorization": f"Bearer {token}"})
        assert json.load(urllib.request.urlopen(req, timeout=10))["external_ref"] == "MRN-1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert token not in stderr and "MRN-1" not in stderr  # the log never sees the token or the ref
    assert '"route": "/v1/patients/{patient_id}"' in stderr
