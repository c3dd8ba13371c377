"""Blind indexes rotate with the KEK epochs: an old backup's index of an erased patient's
MRN matches no index a live key can make once the old epoch is destroyed, while lookups
by MRN keep working through and after the rotation; the erasure reason dies with the
epoch; signed URLs and receipts' patient references use long-lived keys of their own."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from keys.errors import KeyDestroyed
from vault.actor import Actor
from vault.appkeys import RUNTIME
from vault.db import utcnow
from vault.keyops import KeyOperations
from vault.lifecycle.models import ErasureRequest
from vault.lifecycle.reasons import open_erasure_reason
from vault.patients.models import Patient
from vault.patients.service import REF_INDEX
from vault import signedurls


async def _patient(client, clinic, mrn: str) -> str:
    resp = await client.post("/v1/patients", json={"external_ref": mrn}, headers=clinic.auth("practitioner"))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def _find(client, clinic, mrn: str) -> list[str]:
    resp = await client.get("/v1/patients", params={"external_ref": mrn}, headers=clinic.auth("records"))
    assert resp.status == 200, await resp.text()
    return [p["id"] for p in (await resp.json())["items"]]


async def test_a_backups_index_of_an_erased_mrn_is_unconfirmable_after_the_epoch(client, clinic):
    rt = client.server.app[RUNTIME]
    victim, kept = await _patient(client, clinic, "MRN-erased-1"), await _patient(client, clinic, "MRN-kept-1")
    # The backup: the metadata rows as they are now.
    async with rt.db.session() as session:
        backup = {p.id: p.ref_index for p in (await session.execute(
            select(Patient).where(Patient.id.in_([victim, kept])))).scalars()}
    assert await rt.keys.blind_index(clinic.id, REF_INDEX, "MRN-erased-1") == backup[victim]  # the threat today
    resp = await client.post(f"/v1/patients/{victim}/erasure", json={"reason": "asked by the patient"},
                             headers=clinic.auth("erasure"))
    assert resp.status == 200, await resp.text()
    async with rt.db.session() as session:
        request = (await session.execute(select(ErasureRequest).where(ErasureRequest.patient_id == victim))).scalar_one()
    assert await open_erasure_reason(rt.keys, clinic.id, victim, request.id, request.reason) == "asked by the patient"
    params = await signedurls.sign(rt.keys, clinic.id, purpose="thumb", resource="m1", token_id="t1",
                                   expires_at=utcnow() + timedelta(hours=1))

    actor = Actor.cli(clinic.id, "test")
    ops = KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)
    await ops.rotate(clinic.id, actor=actor)
    # Re-indexed under the new epoch; lookups work, and uniqueness holds across epochs.
    async with rt.db.session() as session:
        moved = (await session.get(Patient, kept)).ref_index
    assert moved != backup[kept] and moved == await rt.keys.blind_index(clinic.id, REF_INDEX, "MRN-kept-1")
    assert await _find(client, clinic, "MRN-kept-1") == [kept]
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-kept-1"}, headers=clinic.auth("practitioner"))
    assert resp.status == 409
    await ops.destroy_version(clinic.id, 1, actor=actor, force=True)

    # No live key makes the backup's index again: not the current epoch's, nor any live one's.
    live = await rt.keys.blind_indexes(clinic.id, REF_INDEX, "MRN-erased-1")
    assert backup[victim] not in live and live == [await rt.keys.blind_index(clinic.id, REF_INDEX, "MRN-erased-1")]
    assert backup[kept] not in await rt.keys.blind_indexes(clinic.id, REF_INDEX, "MRN-kept-1")
    assert await _find(client, clinic, "MRN-kept-1") == [kept]
    assert await _find(client, clinic, " mrn-KEPT-1 ") == [kept]  # normalised as before
    assert await _find(client, clinic, "MRN-erased-1") == []
    # The erasure reason did not outlive the epoch; the signed URL key did (its own purpose).
    with pytest.raises(KeyDestroyed):
        await open_erasure_reason(rt.keys, clinic.id, victim, request.id, request.reason)
    await signedurls.verify(rt.keys, clinic.id, purpose="thumb", resource="m1", params=params, now=utcnow())
