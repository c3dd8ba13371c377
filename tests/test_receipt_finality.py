"""Receipts that are true: the date is the epochs' recorded destruction schedule, a vault
without a running worker promises no date, and once the epoch is destroyed the vault
signs a finality attestation (GET /v1/erasure-receipts/{id}/finality)."""

from __future__ import annotations

from datetime import timedelta

from vault.appkeys import RUNTIME
from vault.actor import Actor
from vault.db import utcnow
from vault.errors import Conflict
from vault.jobs.heartbeat import beat, forget
from vault.keyops import KeyOperations, rotate_and_expire
from vault.receipts import verify_finality, verify_receipt


async def _erase(client, clinic) -> dict:
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-finality"}, headers=clinic.auth("dpo"))
    patient = (await resp.json())["id"]
    resp = await client.post(f"/v1/patients/{patient}/erasure", json={"reason": "asked"}, headers=clinic.auth("erasure"))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_receipt_date_is_the_schedule_and_finality_follows_destruction(client, clinic):
    app = client.server.app
    rt = app[RUNTIME]
    await beat(app[RUNTIME].db, "test-finality-worker", kinds=3)  # a worker runs the periodic key jobs
    try:
        signed = await _erase(client, clinic)
    finally:
        await forget(app[RUNTIME].db, "test-finality-worker")
    receipt = signed["receipt"]
    public = (await (await client.get("/v1/erasure-receipts/public-key")).json())["public_key_pem"]
    assert verify_receipt(receipt, signed["signature"], public)
    (v1,) = await rt.keys.kek_versions(clinic.id)
    assert receipt["provider"] == "file" and receipt["no_date_reason"] is None and not receipt["legacy_epoch"]
    assert [e["root_version"] for e in receipt["epochs"]] == [v1.root_version]
    assert receipt["irrecoverable_after"] == v1.destroy_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert v1.destroy_after - v1.created_at == timedelta(days=rt.settings.backup_window_days)

    url = f"/v1/erasure-receipts/{receipt['receipt_id']}/finality"
    resp = await client.get(url, headers=clinic.auth("dpo"))
    pending = await resp.json()
    assert resp.status == 200 and pending["finality"]["final"] is False
    assert verify_finality(pending["finality"], pending["signature"], public)

    # The periodic job does nothing early; the operator needs --force inside the window.
    actor = Actor.cli(clinic.id, "test")
    ops = _ops(rt)
    await ops.rotate(clinic.id, actor=actor)
    assert (await _upkeep(rt, clinic.id, now=utcnow())).destroyed == ()
    try:
        await ops.destroy_version(clinic.id, 1, actor=actor)
        raise AssertionError("destroying an epoch inside the window needs force")
    except Conflict as exc:
        assert "--force" in str(exc)
    # At its date the job destroys it (one job period early at most), and finality is signed.
    upkeep = await _upkeep(rt, clinic.id, now=v1.destroy_after - timedelta(minutes=30))
    assert 1 in upkeep.destroyed and upkeep.rotated_to == 3  # v2 is due too, by then
    final = await (await client.get(url, headers=clinic.auth("erasure"))).json()
    assert final["finality"]["final"] is True and "checked_at" not in final["finality"]
    assert final["finality"]["receipt_id"] == receipt["receipt_id"]
    assert verify_finality(final["finality"], final["signature"], public)
    assert not verify_finality({**final["finality"], "final": False}, final["signature"], public)
    again = await (await client.get(url, headers=clinic.auth("dpo"))).json()
    assert again == final  # a lasting statement: the same bytes at every call
    assert (await client.get(url, headers=clinic.auth("practitioner"))).status == 403


async def test_verify_receipt_online(client, clinic, settings, tmp_path, monkeypatch):
    import json

    from tests.shredding.support import run_cli

    rt = client.server.app[RUNTIME]
    signed = await _erase(client, clinic)
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(signed))
    pending = await run_cli(settings, "keys", "verify-receipt", str(path), "--online", monkeypatch=monkeypatch)
    assert pending.code == 3 and "not final yet" in pending.out, pending.out + pending.err
    actor = Actor.cli(clinic.id, "test")
    await _ops(rt).rotate(clinic.id, actor=actor)
    await _ops(rt).destroy_version(clinic.id, 1, actor=actor, force=True)
    final = await run_cli(settings, "keys", "verify-receipt", str(path), "--online", monkeypatch=monkeypatch)
    assert final.code == 0 and "final: every epoch" in final.out, final.out + final.err


async def test_forced_destruction_inside_the_window(client, clinic):
    rt = client.server.app[RUNTIME]
    actor = Actor.cli(clinic.id, "test")
    ops = _ops(rt)
    await ops.rotate(clinic.id, actor=actor)
    assert await ops.destroy_version(clinic.id, 1, actor=actor, force=True) is not None
    (v1, _v2) = await rt.keys.kek_versions(clinic.id)
    assert v1.state == "destroyed"


def _ops(rt) -> KeyOperations:
    return KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)


async def _upkeep(rt, tenant_id: str, *, now):
    """The periodic job's step for one tenant, with the settings' periods."""
    return await rotate_and_expire(_ops(rt), tenant_id, now=now, rotate_after=timedelta(days=rt.settings.kek_rotation_days),
                                   backup_window=timedelta(days=rt.settings.backup_window_days))
