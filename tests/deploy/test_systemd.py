"""deploy/systemd: the units load (``systemd-analyze verify``) and are hardened
(``systemd-analyze security --offline``: exposure at most 3.0, "OK"). Neither needs a
running systemd, so this works in a container."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import need

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = {"vault@.service": "vault@8081.service", "vault-worker.service": "vault-worker.service"}


def _installable_copy(source: Path, target: Path) -> Path:
    """verify needs ExecStart's binary to exist and the environment file is per host:
    point ExecStart at a real executable and make the environment file optional."""
    text = source.read_text()
    assert "ExecStart=/opt/vault/bin/vault " in text
    text = text.replace("/opt/vault/bin/vault", "/bin/true").replace("EnvironmentFile=/", "EnvironmentFile=-/")
    target.write_text(text)
    return target


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_unit_verifies_and_is_hardened(unit, tmp_path):
    analyze = need("systemd-analyze")
    copy = _installable_copy(DEPLOY / unit, tmp_path / UNITS[unit])
    text = copy.read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "User=vault", "LimitCORE=0",
                 "ReadWritePaths=/var/lib/vault /var/lib/vault-keyring"):
        assert line in text.splitlines(), f"{unit} lacks {line}"

    verify = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    security = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(copy)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout + security.stderr)
    assert found, security.stdout[-2000:]
    exposure, verdict = float(found.group(1)), found.group(2)
    assert exposure <= 3.0 and verdict == "OK", f"{unit}: exposure {exposure} {verdict}"


def test_environment_example_names_only_known_settings():
    from vault.config import Settings

    example = DEPLOY / "vault.env.example"
    env = dict(line.split("=", 1) for line in example.read_text().splitlines() if re.match(r"^VAULT_\w+=", line))
    readme = (DEPLOY.parents[1] / "README.md").read_text()
    unknown = sorted(name for name in env if f"`{name}`" not in readme)
    assert not unknown, f"vault.env.example sets settings README.md does not document: {unknown}"
    env.pop("VAULT_FACE_MODEL")  # a path on the target host
    settings = Settings.from_env(env)  # parses and validates; nothing is opened
    assert settings.production and not settings.inprocess_jobs and settings.metrics_token is None
