"""Erasure end to end over HTTP: receipt, every path refusing, no key left in the key
store, no blob left after the clean-up job, audit chain intact; legal hold; media delete."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from keys.models import object_keys, patient_deks
from tests.lifecycle.support import Api, drain, job_states
from tests.support.workers import no_live_workers
from tests.shredding.support import keystore_engine
from vault.lifecycle.erasure import PURGE_MEDIA, PURGE_PATIENT
from vault.lifecycle.models import ErasureRequest
from vault.media.models import MediaBlob
from vault.patients.models import Patient
from vault.receipts import verify_receipt
from vault.webhooks.models import WebhookEvent


async def _stored_blob_ids(api: Api, patient_id: str) -> list[str]:
    from vault.consent.models import ConsentRecord, Release
    from vault.lifecycle.models import Export

    ids = []
    async with api.rt.db.session() as s:
        for column, owner in ((MediaBlob.id, MediaBlob.patient_id), (ConsentRecord.evidence_blob_id, ConsentRecord.patient_id),
                              (Release.blob_id, Release.patient_id), (Export.blob_id, Export.patient_id)):
            ids += [i for i in (await s.execute(select(column).where(owner == patient_id))).scalars() if i]
    return ids


async def _key_rows(api: Api, patient_id: str):
    engine = keystore_engine(api.rt.settings)
    try:
        async with engine.connect() as conn:
            deks = (await conn.execute(select(patient_deks).where(patient_deks.c.patient_id == patient_id))).all()
            objects = (await conn.execute(select(object_keys).where(object_keys.c.patient_id == patient_id))).all()
    finally:
        await engine.dispose()
    return deks, objects


def _keystore_bytes(settings) -> bytes | None:
    if not settings.keystore_url.startswith("sqlite"):
        return None
    from pathlib import Path

    path = Path(settings.keystore_url.split("///", 1)[1])
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


async def _patient_with_everything(api: Api) -> dict:
    ref = "MRN-erase-" + api.clinic.slug
    patient = await api.patient(external_ref=ref, display_name="Ada Example", date_of_birth="1980-02-03", notes="allergic")
    treatment = await api.treatment(patient)
    media = [await api.photo(patient, seed=i, treatment_id=treatment) for i in range(2)]
    consent = await api.consent(patient, evidence=True)
    release = await api.release(media[0])
    export = await api.export(patient)
    await drain(api.rt, "lifecycle.build_export")
    assert (await api.json("GET", f"/v1/exports/{export}"))["status"] == "ready"
    return {"patient": patient, "ref": ref, "treatment": treatment, "media": media, "consent": consent, "release": release,
            "export": export}


async def test_erasure_shreds_everything_and_every_path_refuses(api: Api):
    # A webhook endpoint, so the recall notification is recorded (a closed loopback port).
    await api.json("PUT", "/v1/webhooks", role="admin", json={"urls": ["http://127.0.0.1:9/hooks/vault"]})
    p = await _patient_with_everything(api)
    pid = p["patient"]
    deks, objects = await _key_rows(api, pid)
    assert len(deks) == 1 and len(objects) >= 2 * 3 + 1  # three renditions per photo, evidence, export
    secrets_before = [deks[0].wrapped, *(o.wrapped for o in objects)]
    blobs = await _stored_blob_ids(api, pid)
    assert all([await api.rt.store.exists(b) for b in blobs]) and len(blobs) >= 8

    await no_live_workers(api.rt.db)
    signed = await api.json("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "Art. 17 request"})
    receipt = signed["receipt"]
    assert receipt["destroyed_key_ids"] == [deks[0].dek_id]
    assert receipt["object_count"] == len(blobs)
    assert receipt["legal_hold_checked"] is True
    # No worker runs the periodic key jobs here: the receipt says it cannot promise a date.
    assert receipt["irrecoverable_after"] is None and "no worker" in receipt["no_date_reason"]
    assert receipt["provider"] == "file" and receipt["epochs"] and not receipt["legacy_epoch"]
    assert pid not in json.dumps(signed) and "Art. 17" not in json.dumps(signed)
    public = await api.json("GET", "/v1/erasure-receipts/public-key")
    assert verify_receipt(receipt, signed["signature"], public["public_key_pem"])
    assert not verify_receipt({**receipt, "object_count": 0}, signed["signature"], public["public_key_pem"])
    # Calling again returns the same receipt.
    assert await api.json("POST", f"/v1/patients/{pid}/erasure", json={"reason": "again"}) == signed

    # The DEK is gone at once: the object keys it wrapped can never be unwrapped again.
    assert (await _key_rows(api, pid))[0] == []

    # A pseudonymous tombstone: no personal column, no blind index.
    async with api.rt.db.session() as s:
        row = await s.get(Patient, pid)
    assert row.status == "erased" and row.erased_at is not None
    assert (row.ref_index, row.external_ref, row.display_name, row.date_of_birth, row.notes) == (None,) * 5

    await _every_path_refuses(api, p)

    # The one clean-up job deletes every blob and notifies the recall webhooks.
    assert await job_states(api.rt, PURGE_PATIENT, pid) == ["queued"]
    await drain(api.rt, PURGE_PATIENT)
    assert await job_states(api.rt, PURGE_PATIENT, pid) == ["done"]
    # The key store holds no trace of the patient's keys (the dead object-key rows went in bulk).
    assert await _key_rows(api, pid) == ([], [])
    on_disk = _keystore_bytes(api.rt.settings)
    if on_disk is not None:
        assert [s for s in secrets_before if s in on_disk] == []
    assert [b for b in blobs if await api.rt.store.exists(b)] == []
    assert await _stored_blob_ids(api, pid) == []
    async with api.rt.db.session() as s:
        events = [json.loads(e.body) for e in (await s.execute(
            select(WebhookEvent).where(WebhookEvent.tenant_id == api.clinic.id, WebhookEvent.kind == "patient.erased")
        )).scalars()]
    assert [(e["patient_id"], e["release_ids"]) for e in events] == [(pid, [p["release"]])]

    verified = await api.json("GET", "/v1/audit/verify")
    assert verified["ok"] is True
    entries = await api.json("GET", "/v1/audit", params={"target": pid, "action": "patient.erase", "limit": 1000})
    assert [e["outcome"] for e in entries["items"]] == ["ok", "already_erased"]


async def _every_path_refuses(api: Api, p: dict) -> None:
    pid, mid, cid, rid, eid = p["patient"], p["media"][0], p["consent"], p["release"], p["export"]
    gone = (404, 410)
    calls = [
        ("GET", f"/v1/patients/{pid}", "records", {}),
        ("PATCH", f"/v1/patients/{pid}", "dpo", {"json": {"display_name": "x"}}),
        ("GET", f"/v1/patients/{pid}/treatments", "records", {}),
        ("POST", f"/v1/patients/{pid}/treatments", "practitioner", {"json": {"name": "x", "performed_on": "2026-01-01"}}),
        ("GET", f"/v1/patients/{pid}/media", "records", {}),
        ("POST", f"/v1/patients/{pid}/media", "practitioner",
         {"data": b"\xff\xd8\xff", "headers": {"Content-Type": "image/jpeg"}}),
        ("GET", f"/v1/media/{mid}", "records", {}),
        ("PATCH", f"/v1/media/{mid}", "dpo", {"json": {"phase": "before"}}),
        ("DELETE", f"/v1/media/{mid}", "dpo", {}),
        ("GET", f"/v1/media/{mid}/content", "records", {}),
        ("GET", f"/v1/media/{mid}/thumbnail", "records", {}),
        ("GET", f"/v1/patients/{pid}/consents", "dpo", {}),
        ("POST", f"/v1/patients/{pid}/consents", "dpo", {"json": {"purposes": ["education"], "identifiable": True}}),
        ("POST", f"/v1/consents/{cid}/withdraw", "dpo", {}),
        ("GET", f"/v1/consents/{cid}/evidence", "dpo", {}),
        ("POST", f"/v1/media/{mid}/releases", "marketing", {"json": {"purpose": "education", "recipient": "x"}}),
        ("GET", f"/v1/releases/{rid}/download", "marketing", {}),
        ("PUT", f"/v1/patients/{pid}/legal-hold", "dpo", {"json": {"reason": "litigation"}}),
        ("DELETE", f"/v1/patients/{pid}/legal-hold", "dpo", {}),
        ("PUT", f"/v1/patients/{pid}/restriction", "dpo", {}),
        ("DELETE", f"/v1/patients/{pid}/restriction", "dpo", {}),
        ("POST", f"/v1/patients/{pid}/exports", "dpo", {}),
        ("GET", f"/v1/exports/{eid}", "dpo", {}),
        ("GET", f"/v1/exports/{eid}/download", "dpo", {}),
    ]
    wrong = []
    for method, path, role, kwargs in calls:
        resp, body = await api.call(method, path, role=role, **kwargs)
        if resp.status in gone:
            continue
        # The release paths ask the consent gate, which refuses an erased patient with
        # 403 consent_required / patient_erased (vault/consent/releases.py): still a refusal.
        if role == "marketing" and resp.status == 403 and json.loads(body)["details"].get("reason") == "patient_erased":
            continue
        wrong.append((method, path, resp.status, body[:160]))
    assert wrong == []
    found = await api.json("GET", "/v1/patients", role="records", params={"external_ref": p["ref"]})
    assert found["items"] == []
    listed = await api.json("GET", "/v1/releasable", role="marketing")
    assert [i for i in listed["items"] if i["media_id"] in p["media"]] == []


async def test_legal_hold_blocks_erasure_until_lifted(api: Api):
    pid = await api.patient()
    mid = await api.photo(pid)
    held = await api.json("PUT", f"/v1/patients/{pid}/legal-hold", json={"reason": "pending litigation, case 2026-17"})
    assert held["legal_hold"] is True and "litigation" not in json.dumps(held)

    resp, body = await api.call("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "asked by patient"},
                                status=409)
    error = json.loads(body)
    assert error["error"] == "legal_hold"
    assert "litigation" not in body.decode() and "asked by" not in body.decode()
    resp, body = await api.call("DELETE", f"/v1/media/{mid}", status=409)
    assert json.loads(body)["error"] == "legal_hold"
    # Nothing happened: the patient and the photo are intact.
    await api.call("GET", f"/v1/media/{mid}/content", role="records", status=200)

    lifted = await api.json("DELETE", f"/v1/patients/{pid}/legal-hold")
    assert lifted["legal_hold"] is False
    signed = await api.json("POST", f"/v1/patients/{pid}/erasure", role="erasure", json={"reason": "asked by patient"})
    assert signed["receipt"]["object_count"] == 3
    await api.call("GET", f"/v1/patients/{pid}", role="records", status=410)
    actions = await api.json("GET", "/v1/audit", params={"target": pid, "limit": 1000})
    outcomes = [(e["action"], e["outcome"]) for e in actions["items"] if e["action"].startswith(("patient.", "media.delete"))]
    assert ("patient.erasure_request", "legal_hold") in outcomes and ("media.delete", "legal_hold") in outcomes
    assert ("patient.legal_hold.place", "ok") in outcomes and ("patient.legal_hold.lift", "ok") in outcomes


async def test_a_hold_cannot_be_placed_while_an_erasure_is_under_way(api: Api):
    pid = await api.patient()
    async with api.rt.db.transaction() as s:
        s.add(ErasureRequest(tenant_id=api.clinic.id, patient_id=pid, requested_by="test", dek_id=None))
    resp, body = await api.call("PUT", f"/v1/patients/{pid}/legal-hold", json={"reason": "x"}, status=409)
    assert json.loads(body)["details"] == {"reason": "erasure_in_progress"}


async def test_erasure_of_another_tenants_patient_is_404(api: Api, other_api: Api):
    pid = await other_api.patient()
    await api.call("POST", f"/v1/patients/{pid}/erasure", json={"reason": "x"}, status=404)
    await other_api.call("GET", f"/v1/patients/{pid}", role="records", status=200)


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "x", "extra": 1}])
async def test_erasure_needs_a_reason(api: Api, body):
    pid = await api.patient()
    await api.call("POST", f"/v1/patients/{pid}/erasure", json=body, status=422)


async def test_delete_media_shreds_one_object(api: Api):
    pid = await api.patient()
    keep, doomed = await api.photo(pid, seed=1), await api.photo(pid, seed=2)
    await api.consent(pid)
    release = await api.release(doomed)
    async with api.rt.db.session() as s:
        blobs = list((await s.execute(select(MediaBlob.id).where(MediaBlob.media_id == doomed))).scalars())
    engine = keystore_engine(api.rt.settings)
    async with engine.connect() as conn:
        wrapped = [r.wrapped for r in (await conn.execute(select(object_keys).where(object_keys.c.object_id.in_(blobs)))).all()]
    await engine.dispose()
    assert len(wrapped) == 3

    result = await api.json("DELETE", f"/v1/media/{doomed}")
    assert result["status"] == "deleted" and len(result["destroyed_key_ids"]) == 3
    assert [r["id"] for r in result["recall"]] == [release]
    for path in (f"/v1/media/{doomed}", f"/v1/media/{doomed}/content", f"/v1/media/{doomed}/thumbnail"):
        await api.call("GET", path, role="records", status=410)
    listing = await api.json("GET", f"/v1/patients/{pid}/media", role="records")
    assert [m["id"] for m in listing["items"]] == [keep]
    await api.call("GET", f"/v1/media/{keep}/content", role="records", status=200)
    on_disk = _keystore_bytes(api.rt.settings)
    if on_disk is not None:
        assert [w for w in wrapped if w in on_disk] == []

    await drain(api.rt, PURGE_MEDIA)
    assert [b for b in blobs if await api.rt.store.exists(b)] == []
    # Deleting again is harmless and reports nothing more destroyed.
    again = await api.json("DELETE", f"/v1/media/{doomed}")
    assert again["destroyed_key_ids"] == []


async def test_restriction_blocks_release_not_clinical_reads(api: Api):
    pid = await api.patient()
    mid = await api.photo(pid)
    await api.consent(pid)
    assert (await api.json("PUT", f"/v1/patients/{pid}/restriction"))["status"] == "restricted"
    listed = await api.json("GET", "/v1/releasable", role="marketing")
    assert mid not in {i["media_id"] for i in listed["items"]}
    resp, body = await api.call("POST", f"/v1/media/{mid}/releases", role="marketing",
                                json={"purpose": "education", "recipient": "x"}, status=403)
    assert json.loads(body)["details"]["reason"] == "patient_restricted"
    assert (await api.json("GET", f"/v1/patients/{pid}", role="records"))["status"] == "restricted"
    await api.call("GET", f"/v1/media/{mid}/content", role="records", status=200)
    export_id = await api.export(pid)  # to the patient, not a third party
    await drain(api.rt, "lifecycle.build_export")
    assert (await api.json("GET", f"/v1/exports/{export_id}"))["status"] == "ready"
    assert (await api.json("DELETE", f"/v1/patients/{pid}/restriction"))["status"] == "active"
    assert mid in {i["media_id"] for i in (await api.json("GET", "/v1/releasable", role="marketing"))["items"]}
