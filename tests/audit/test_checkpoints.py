"""Signed audit checkpoints catch what the hash chain alone cannot: a truncated log with
its head moved back, and a chain whose every hash was recomputed after an edit."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, text, update

from keys.signing import verify_document
from tests.shredding.support import run_cli
from vault.appkeys import RUNTIME
from vault.audit.checkpoints import Checkpoints, checkpoint_all
from vault.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from vault.audit.service import canonical, chain_hash, genesis_hash


def _checkpoints(client) -> Checkpoints:
    app = client.server.app
    return Checkpoints(app[RUNTIME].db, app[RUNTIME].audit, app[RUNTIME].keys)


async def _entries(client, clinic, n: int) -> None:
    for _ in range(n):
        assert (await client.get("/v1/audit", headers=clinic.auth("auditor"))).status == 200


async def _verify_http(client, clinic) -> dict:
    resp = await client.get("/v1/audit/verify", headers=clinic.auth("auditor"))
    assert resp.status == 200
    return await resp.json()


async def _truncate(db, tenant_id: str, keep: int) -> None:
    """Delete every entry after ``keep`` and move the head back: a valid, shorter chain."""
    async with db.transaction() as s:
        kept_hash = await s.scalar(select(AuditEntry.hash).where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq == keep))
        await s.execute(text("DELETE FROM audit_entries WHERE tenant_id = :t AND seq > :k"), {"t": tenant_id, "k": keep})
        await s.execute(update(AuditHead).where(AuditHead.tenant_id == tenant_id).values(seq=keep, hash=kept_hash))


async def _edit_and_recompute(db, tenant_id: str, seq: int) -> None:
    """Edit one entry, then recompute every hash after it consistently and update the head."""
    async with db.transaction() as s:
        rows = list((await s.execute(
            select(AuditEntry).where(AuditEntry.tenant_id == tenant_id).order_by(AuditEntry.seq)
        )).scalars())
        prev = genesis_hash(tenant_id)
        for row in rows:
            if row.seq == seq:
                row.action = "patient.nothing_to_see"
            body = canonical(tenant_id=row.tenant_id, seq=row.seq, at=row.at, actor=row.actor, role=row.role,
                             action=row.action, targets=row.targets, outcome=row.outcome, request_id=row.request_id)
            row.prev_hash, row.hash = prev, chain_hash(prev, body)
            prev = row.hash
        await s.execute(update(AuditHead).where(AuditHead.tenant_id == tenant_id).values(seq=rows[-1].seq, hash=prev))


async def test_checkpoints_sign_the_head_and_verify(client, clinic):
    await _entries(client, clinic, 3)
    checkpoints = _checkpoints(client)
    cp = await checkpoints.checkpoint(clinic.id)
    assert (cp.seq, cp.hash) == await client.server.app[RUNTIME].audit.head(clinic.id)
    assert (await checkpoints.checkpoint(clinic.id)).signature == cp.signature  # head unmoved: same checkpoint
    await _entries(client, clinic, 2)
    later = await checkpoints.checkpoint(clinic.id)
    assert later.seq > cp.seq
    result = await _verify_http(client, clinic)
    assert result["ok"] is True and result["checkpoints"] == {"checked": 2, "newest_seq": later.seq}


@pytest.mark.parametrize("keep_back", [1, 4], ids=["last-entry", "several-entries"])
async def test_truncation_with_the_head_moved_back_is_detected(client, clinic, keep_back):
    app = client.server.app
    await _entries(client, clinic, 5)
    cp = await _checkpoints(client).checkpoint(clinic.id)
    await _truncate(app[RUNTIME].db, clinic.id, cp.seq - keep_back)

    assert (await app[RUNTIME].audit.verify(clinic.id)).ok  # the chain alone is fooled
    result = await _checkpoints(client).verify(clinic.id)
    assert not result.ok
    assert result.first_bad_seq == cp.seq - keep_back + 1
    assert f"before signed checkpoint {cp.seq}" in result.reason
    assert (await _verify_http(client, clinic))["ok"] is False


async def test_a_fully_recomputed_chain_is_detected(client, clinic):
    app = client.server.app
    await _entries(client, clinic, 4)
    cp = await _checkpoints(client).checkpoint(clinic.id)
    await _entries(client, clinic, 2)
    await _edit_and_recompute(app[RUNTIME].db, clinic.id, seq=cp.seq - 2)

    assert (await app[RUNTIME].audit.verify(clinic.id)).ok  # consistent hashes: the chain alone is fooled
    result = await _checkpoints(client).verify(clinic.id)
    assert not result.ok and result.first_bad_seq == cp.seq
    assert "differs from its signed checkpoint" in result.reason

    # moving the checkpoint to the new hash breaks its signature instead
    new_hash = (await app[RUNTIME].audit.entries(clinic.id, after_seq=cp.seq - 1, limit=1))[0].hash
    async with app[RUNTIME].db.transaction() as s:
        await s.execute(update(AuditCheckpoint).where(AuditCheckpoint.tenant_id == clinic.id,
                                                      AuditCheckpoint.seq == cp.seq).values(hash=new_hash))
    result = await _checkpoints(client).verify(clinic.id)
    assert not result.ok and "invalid signature" in result.reason


async def test_checkpoint_and_verify_from_the_cli(client, clinic, settings, monkeypatch):
    app = client.server.app
    await _entries(client, clinic, 3)
    made = await run_cli(settings, "audit", "checkpoint", "--tenant", clinic.slug, "--json", monkeypatch=monkeypatch)
    assert made.code == 0, made.err
    exported = json.loads(made.out.strip().splitlines()[-1])
    assert exported["checkpoint"]["type"] == "audit_checkpoint"
    assert verify_document(exported["checkpoint"], exported["signature"], await app[RUNTIME].keys.public_key_pem())

    ok = await run_cli(settings, "audit", "verify", "--tenant", clinic.slug, monkeypatch=monkeypatch)
    assert ok.code == 0 and "1 signed checkpoints" in ok.out
    await _truncate(app[RUNTIME].db, clinic.id, exported["checkpoint"]["seq"] - 1)
    broken = await run_cli(settings, "audit", "verify", "--tenant", clinic.slug, monkeypatch=monkeypatch)
    assert broken.code == 1 and f"BROKEN at entry {exported['checkpoint']['seq']}" in broken.out


async def test_checkpoint_all_signs_each_moved_head_once(client, clinic, other_clinic, settings):
    from vault.runtime import runtime

    async with runtime(settings, group_commit=False) as rt:
        tenants = [t.id for t in await rt.tenants.tenants()]
        assert await checkpoint_all(rt.checkpoints, tenants) >= 2
        assert await checkpoint_all(rt.checkpoints, tenants) == 0
        await _entries(client, clinic, 1)
        assert await checkpoint_all(rt.checkpoints, tenants) == 1
    for tenant in (clinic, other_clinic):
        assert (await _checkpoints(client).verify(tenant.id)).ok
