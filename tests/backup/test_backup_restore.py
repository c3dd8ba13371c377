"""`vault backup` / `vault restore` as an operator runs them, on SQLite and PostgreSQL:
an erasure and a photo deletion made after the backup stay done after the restore."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pytest

from keys.errors import KeyDestroyed
from tests.backup.support import own_vault, start
from tests.shredding.support import fetch_all, new_patient, upload_photo
from tests.support.databases import backends
from vault.appkeys import RUNTIME
from vault.jobs.heartbeat import beat, forget


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("backend", backends())
async def test_restore_keeps_later_erasures_and_deletions(backend, tmp_path, aiohttp_client):
    async with own_vault(backend, tmp_path) as vault:
        client = await start(vault, aiohttp_client)
        erased, other, bystander = [await new_patient(client, vault) for _ in range(3)]
        photos = {"erased": await upload_photo(client, vault, erased, seed=1),
                  "gone": await upload_photo(client, vault, other, seed=2),
                  "kept": await upload_photo(client, vault, other, seed=3),
                  "bystander": await upload_photo(client, vault, bystander, seed=4)}
        before = {name: await fetch_all(client, vault, m) for name, m in photos.items()}
        rt = client.server.app[RUNTIME]
        store_blobs = {}
        async for key in rt.store.keys():
            store_blobs[key] = hashlib.sha256(await rt.store.read(key)).hexdigest()
        root_version = (await rt.keys.root_versions(tenant_id=vault.tenant_id))[0]
        await client.close()

        backup = tmp_path / "backup"
        made = vault.cli("backup", "--to", str(backup))
        assert made.returncode == 0, made.stderr
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["order"] == ["metadata", "keystore"] and manifest["root_keyring_included"] is False
        assert {i["key"]: i["sha256"] for i in manifest["blobs"]["items"]} == store_blobs
        assert manifest["blobs"]["mode"] == "copied"
        for item in manifest["blobs"]["items"]:
            assert hashlib.sha256((backup / "blobs" / item["key"]).read_bytes()).hexdigest() == item["sha256"]
        (epoch,) = [e for e in manifest["epochs"] if e["tenant_id"] == vault.tenant_id]
        assert epoch["root_version"] == root_version.version_id and epoch["kek_version"] == 1
        assert _when(manifest["unrestorable_after"]) == (
            root_version.destroy_after.replace(microsecond=0) - timedelta(days=7))
        # no root key material anywhere in the backup
        keyring = [p.read_bytes() for p in (tmp_path / "keyring").iterdir() if p.is_file()]
        assert keyring
        for path in backup.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(k in data for k in keyring), path

        # after the backup: erase one patient, delete one photo of another
        client = await start(vault, aiohttp_client)
        resp = await client.post(f"/v1/patients/{erased}/erasure", json={"reason": "Art. 17"}, headers=vault.auth("dpo"))
        assert resp.status == 200, await resp.text()
        receipt = await resp.json()
        resp = await client.delete(f"/v1/media/{photos['gone']}", headers=vault.auth("dpo"))
        assert resp.status == 200, await resp.text()
        await client.close()
        journal = list((tmp_path / "keyring.shred-journal").glob("*.jsonl"))
        assert journal and all(line for line in journal[0].read_text().splitlines())

        # refusals: a running vault (a worker's heartbeat), a non-empty target without --force; no journal
        client = await start(vault, aiohttp_client)
        db = client.server.app[RUNTIME].db
        await beat(db, "test-worker", kinds=1)
        running = vault.cli("restore", "--from", str(backup))
        assert running.returncode == 1 and "worker(s) of this vault are running" in running.stderr, running.stderr
        await forget(db, "test-worker")
        await client.close()
        refused = vault.cli("restore", "--from", str(backup))
        assert refused.returncode == 1 and "not empty" in refused.stderr and "--force" in refused.stderr
        lost = vault.cli("restore", "--from", str(backup), "--force", env={"VAULT_SHRED_JOURNAL": str(tmp_path / "nowhere")})
        assert lost.returncode == 1
        assert "no shred journal" in lost.stderr and "--accept-resurrection-risk" in lost.stderr

        kept_lines = journal[0].read_bytes()
        journal[0].write_bytes(kept_lines.replace(b'"cause":"erasure"', b'"cause":"leftover"', 1))
        forged = vault.cli("restore", "--from", str(backup), "--force")
        assert forged.returncode == 1 and "broken at line" in forged.stderr, forged.stderr
        journal[0].write_bytes(kept_lines)

        restored = vault.cli("restore", "--from", str(backup), "--force")
        assert restored.returncode == 0, restored.stderr
        assert "1 patients erased again, 1 media deleted again" in restored.stdout, restored.stdout

        client = await start(vault, aiohttp_client)
        rt = client.server.app[RUNTIME]
        assert (await client.get(f"/v1/patients/{erased}", headers=vault.auth("practitioner"))).status == 410
        assert set((await fetch_all(client, vault, photos["erased"])).values()) <= {404, 410}
        with pytest.raises(KeyDestroyed):
            await rt.keys.patient_key(vault.tenant_id, erased)
        assert set((await fetch_all(client, vault, photos["gone"])).values()) <= {404, 410}
        assert await fetch_all(client, vault, photos["kept"]) == before["kept"]
        assert await fetch_all(client, vault, photos["bystander"]) == before["bystander"]
        assert (await client.get(f"/v1/patients/{bystander}", headers=vault.auth("practitioner"))).status == 200
        entries = await rt.audit.entries(vault.tenant_id, limit=1000)
        assert "vault.restore" in {e.action for e in entries}
        await client.close()

        (tmp_path / "receipt.json").write_text(json.dumps(receipt))
        checked = vault.cli("keys", "verify-receipt", str(tmp_path / "receipt.json"))
        assert checked.returncode == 0 and checked.stdout.startswith("valid erasure receipt"), checked.stdout
        verified = vault.cli("audit", "verify")
        assert verified.returncode == 0 and "intact" in verified.stdout, verified.stdout


@pytest.mark.parametrize("backend", backends())
async def test_restore_refuses_a_backup_whose_epochs_are_destroyed(backend, tmp_path, aiohttp_client):
    async with own_vault(backend, tmp_path) as vault:
        client = await start(vault, aiohttp_client)
        patient = await new_patient(client, vault)
        await upload_photo(client, vault, patient)
        await client.close()
        backup = tmp_path / "backup"
        assert vault.cli("backup", "--to", str(backup)).returncode == 0
        assert vault.cli("keys", "rotate", "--tenant", vault.slug).returncode == 0
        destroyed = vault.cli("keys", "destroy-kek-version", "--tenant", vault.slug, "--version", "1", "--force")
        assert destroyed.returncode == 0, destroyed.stderr

        refused = vault.cli("restore", "--from", str(backup), "--force")
        assert refused.returncode == 1
        (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("vault:")]
        assert "cannot be restored" in line and "KEK version 1" in line and "destroyed" in line

        # on a new machine (no live key store) the provider itself says the epoch is gone
        unreachable = {"VAULT_KEYSTORE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new' / 'keys.sqlite3'}"}
        again = vault.cli("restore", "--from", str(backup), "--force", env=unreachable)
        assert again.returncode == 1 and "KEK version 1" in again.stderr and "destroyed" in again.stderr
