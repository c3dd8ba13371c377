"""`vault doctor` and `vault serve` as an operator runs them: real processes, real
files, the same checks as /readyz, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.support.databases import backends, fresh_database


def _env(tmp_path, db) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(tmp_path / "data"), VAULT_DATABASE_URL=db.url, VAULT_KEYSTORE_URL=db.keystore_url,
               VAULT_LOG_LEVEL="WARNING", XDG_DATA_HOME=str(tmp_path / "home"))
    return env


def vault(*args, env, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vault.cli", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _failing(out: str) -> dict[str, str]:
    return {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("FAIL")}


@pytest.mark.parametrize("backend", backends())
def test_doctor_names_each_failure(backend, tmp_path):
    with fresh_database(backend, tmp_path) as db:
        env = _env(tmp_path, db)
        assert vault("migrate", env=env).returncode == 0
        assert vault("tenant", "create", "north", env=env).returncode == 0

        alone = vault("doctor", env=env)
        assert alone.returncode == 1 and _failing(alone.stdout) == {"workers": "no_worker_heartbeat"}, alone.stdout

        worker = subprocess.Popen([sys.executable, "-m", "vault.cli", "worker", "--concurrency", "1"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while (healthy := vault("doctor", env=env)).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert healthy.returncode == 0, healthy.stdout
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)

        # the embedded default keeps its keyring outside the data folder
        (ring,) = [p for p in (tmp_path / "home" / "clinical-photo-vault" / "keyring").iterdir()
                   if not p.name.endswith(".shred-journal")]  # the shred journal lives beside it
        assert not list((tmp_path / "data").rglob("*.key"))
        versions = sorted(ring.glob("*.key"))
        assert len(versions) >= 2  # the long-lived service version and tenant north's first epoch

        # the root keys of another vault: nothing opens, and serve refuses with one line
        saved = {path: path.read_bytes() for path in versions}
        for path in versions:
            path.write_bytes(secrets.token_bytes(32))
        wrong = vault("doctor", env=env)
        assert wrong.returncode == 1 and _failing(wrong.stdout)["keystore"] == "wrong_root_key"
        refused = vault("serve", "--port", "9", env=env)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1].startswith("vault: cannot start: keystore:")
        for path, key in saved.items():
            path.write_bytes(key)

        # a data folder copied or restored without its keyring: refused, and no new keyring appears
        aside = ring.with_name("aside")
        ring.rename(aside)
        missing = vault("serve", "--port", "9", env=env)
        assert missing.returncode == 1 and not ring.exists()
        assert "root keyring" in missing.stderr and "is missing" in missing.stderr, missing.stderr
        aside.rename(ring)

        # unwritable blob folder, as a read-only mount would be (caps dropped: root would write anyway)
        blobs = tmp_path / "data" / "blobs"
        folders = [blobs, *(path for path in blobs.rglob("*") if path.is_dir())]
        for folder in folders:
            folder.chmod(0o500)
        try:
            if shutil.which("setpriv"):
                ro = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", sys.executable, "-m",
                                     "vault.cli", "doctor"], env=env, capture_output=True, text=True, timeout=120)
                assert ro.returncode == 1 and _failing(ro.stdout).get("storage") == "storage_failed", ro.stdout
        finally:
            for folder in folders:
                folder.chmod(0o700)

        # the schema behind this code (an upgrade that skipped `vault migrate`)
        from vault.migrate import alembic_config
        from alembic import command

        command.downgrade(alembic_config(db.url), "0006")
        old = vault("doctor", env=env)
        assert old.returncode == 1 and _failing(old.stdout)["schema"] == "metadata_schema_older"
        prod = vault("serve", "--port", "9", env={**env, "VAULT_ENV": "production",
                                                   "VAULT_ROOT_KEY_URL": "aws-kms://alias/none?region=eu-west-1"})
        assert prod.returncode != 0


def test_commands_do_not_create_a_vault_in_the_wrong_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    for args in (("token", "create", "--tenant", "x", "--role", "dpo", "--label", "x"), ("tenant", "create", "x"), ("jobs", "list"),
                 ("keys", "versions", "--tenant", "x"), ("audit", "verify")):
        proc = vault(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "VAULT_DATA_DIR" in lines[0], (args, proc.stderr)
    assert list(tmp_path.iterdir()) == []
    doctor = vault("doctor", env=env, cwd=tmp_path)
    assert doctor.returncode == 1 and "VAULT_DATA_DIR" in doctor.stdout
    assert list(tmp_path.iterdir()) == []


def test_version():
    proc = vault("--version", env=dict(os.environ))
    assert proc.returncode == 0 and proc.stdout.startswith("vault ")
