"""Upgrading a real data folder made by the code before root-key epochs
(tests/data/legacy-vault, see its README): ``vault migrate`` (the real CLI, a subprocess)
moves the legacy root key out of the data folder into the keyring and the tenant into a
new epoch; the app then serves the patient, its sealed fields and its photo; receipts say
"legacy epoch" until the legacy epoch is gone; a rotation moves the tenant on again, and
lookups by MRN keep working once the legacy epoch and its long-lived index key are destroyed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keys.errors import KeyDestroyed
from vault.actor import Actor
from vault.appkeys import RUNTIME
from vault.config import Settings, default_keyring
from vault.keyops import KeyOperations
from tests.conftest import VaultTestServer

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy-vault"


def _env(data: Path, xdg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_DATA_DIR=str(data), XDG_DATA_HOME=str(xdg), VAULT_LOG_LEVEL="WARNING")
    return env


async def test_a_folder_from_before_epochs_upgrades_and_reads(tmp_path: Path, aiohttp_client) -> None:
    expected = json.loads((LEGACY / "expected.json").read_text())
    data, xdg = tmp_path / "data", tmp_path / "xdg"
    shutil.copytree(LEGACY / "data", data)
    (data / "root.key").chmod(0o600)  # git keeps no modes
    env = _env(data, xdg)

    vault = Path(sys.executable).with_name("vault")
    done = subprocess.run([str(vault), "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # The legacy key left the data folder for the keyring outside it.
    keyring = default_keyring(data, env)
    assert not (data / "root.key").exists()
    assert (keyring / "legacy.key").is_file() and not keyring.is_relative_to(data)

    from vault.app import create_app

    settings = Settings.from_env(env)
    client = await aiohttp_client(VaultTestServer(create_app(settings)))
    rt = client.server.app[RUNTIME]
    tenant = expected["tenant"]["id"]
    tokens = expected["tokens"]

    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    patient = expected["patient"]
    view = await (await client.get(f"/v1/patients/{patient['id']}", headers=auth("records"))).json()
    assert {k: view[k] for k in ("external_ref", "display_name", "date_of_birth", "notes")} == {
        k: patient[k] for k in ("external_ref", "display_name", "date_of_birth", "notes")}
    photo = expected["photo"]

    async def content_sha() -> str:
        resp = await client.get(f"/v1/media/{photo['id']}/content", headers=auth("records"))
        assert resp.status == 200, await resp.text()
        return hashlib.sha256(await resp.read()).hexdigest()

    assert await content_sha() == photo["content_sha256"]

    async def find(mrn: str) -> list[str]:
        resp = await client.get("/v1/patients", params={"external_ref": mrn}, headers=auth("records"))
        return [p["id"] for p in (await resp.json())["items"]]

    assert await find(patient["external_ref"]) == [patient["id"]]

    # The legacy epoch was imported, and the migration moved the tenant into a new epoch.
    v1, v2 = await rt.keys.kek_versions(tenant)
    assert (v1.state, v1.root_version, v2.state) == ("retired", None, "active") and v2.root_version
    legacy = [v for v in await rt.keys.root_versions() if v.kind == "legacy"]
    assert len(legacy) == 1 and legacy[0].destroy_after is not None and legacy[0].destroyed_at is None

    # A receipt says "legacy epoch" while the legacy KEK version lives.
    other = expected["other_patient"]
    resp = await client.post(f"/v1/patients/{other['id']}/erasure", json={"reason": "asked"}, headers=auth("erasure"))
    assert resp.status == 200, await resp.text()
    receipt = (await resp.json())["receipt"]
    assert receipt["legacy_epoch"] is True and "legacy" in [e["kind"] for e in receipt["epochs"]]

    # A rotation moves the tenant on; destroying the legacy epoch retires the long-lived
    # index key, and everything still reads and is found.
    actor = Actor.cli(tenant, "upgrade-test")
    ops = KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)
    version, _ = await ops.rotate(tenant, actor=actor)
    assert version == 3
    await ops.destroy_version(tenant, 1, actor=actor, force=True)
    await ops.destroy_version(tenant, 2, actor=actor, force=True)
    assert [v.state for v in await rt.keys.kek_versions(tenant)] == ["destroyed", "destroyed", "active"]
    assert await find(patient["external_ref"]) == [patient["id"]]
    assert await find(other["external_ref"]) == []
    view = await (await client.get(f"/v1/patients/{patient['id']}", headers=auth("records"))).json()
    assert view["notes"] == patient["notes"]
    assert await content_sha() == photo["content_sha256"]
    assert not (await rt.keys.erasure_schedule(tenant)).legacy
    with pytest.raises(KeyDestroyed):  # the long-lived legacy index key is gone
        await rt.keys.legacy_blind_index(tenant, "patient.external_ref", patient["external_ref"])
