"""Erasure receipts: signed with the service key, checked with the key published over HTTP."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.signing import key_fingerprint, sign_document
from tests.shredding.support import new_patient, run_cli, upload_photo
from vault.appkeys import RUNTIME
from vault.db import utcnow
from vault.receipts import build_erasure_receipt, patient_ref, sign_receipt, verify_receipt
from vault.shredding.service import shred_patient


def _edits(receipt: dict) -> list[tuple[str, dict]]:
    """One edited copy per field (same type, different value), plus a dropped and an added field."""
    edited = []
    for name, value in receipt.items():
        doc = copy.deepcopy(receipt)
        if isinstance(value, bool):
            doc[name] = not value
        elif isinstance(value, int):
            doc[name] = value + 1
        elif isinstance(value, list):
            doc[name] = value[:-1] if value else ["00000000-0000-4000-8000-000000000000"]
        else:
            doc[name] = value[:-1] + ("0" if value[-1] != "0" else "1")
        edited.append((f"edit {name}", doc))
        dropped = copy.deepcopy(receipt)
        del dropped[name]
        edited.append((f"drop {name}", dropped))
    edited.append(("add a field", {**receipt, "note": "added"}))
    return edited


async def _erase(client, clinic, settings) -> tuple[str, str, dict]:
    """(patient id, its DEK id, the signed receipt of its erasure)."""
    app = client.server.app
    keys = app[RUNTIME].keys
    patient_id = await new_patient(client, clinic)
    await upload_photo(client, clinic, patient_id)
    dek_id = (await keys.patient_key(clinic.id, patient_id)).dek_id
    requested = utcnow()
    destroyed = await shred_patient(app[RUNTIME].db, keys, clinic.id, patient_id, cause="erasure")
    receipt = build_erasure_receipt(
        tenant_id=clinic.id,
        patient_ref=await patient_ref(keys, clinic.id, patient_id),
        destroyed_key_ids=destroyed,
        object_count=1,
        requested_at=requested,
        completed_at=utcnow(),
        legal_hold_checked=True,
        backup_window_days=settings.backup_window_days,
    )
    return patient_id, dek_id, await sign_receipt(keys, receipt)


async def test_receipt_verifies_with_the_published_key_and_fails_when_any_field_is_edited(client, clinic, settings):
    patient_id, dek_id, signed = await _erase(client, clinic, settings)
    resp = await client.get("/v1/erasure-receipts/public-key")  # public: no token
    assert resp.status == 200
    published = await resp.json()
    assert published["algorithm"] == "Ed25519"
    pem = published["public_key_pem"]
    assert published["fingerprint"] == key_fingerprint(pem)

    receipt = signed["receipt"]
    assert verify_receipt(receipt, signed["signature"], pem)
    assert receipt["type"] == "erasure_receipt" and receipt["signing_key"] == published["fingerprint"]
    assert receipt["destroyed_key_ids"] == [dek_id]  # every object key died with the DEK
    completed = datetime.fromisoformat(receipt["completed_at"])
    assert datetime.fromisoformat(receipt["irrecoverable_after"]) - completed == timedelta(days=settings.backup_window_days)
    assert patient_id not in json.dumps(signed)  # pseudonymous

    edits = _edits(receipt)
    assert len(edits) == 2 * len(receipt) + 1
    for what, doc in edits:
        assert not verify_receipt(doc, signed["signature"], pem), what
    other = Ed25519PrivateKey.generate()
    other_pem = other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not verify_receipt(receipt, signed["signature"], other_pem)
    forged = sign_document(receipt, private_key=other, field="receipt")
    assert not verify_receipt(forged["receipt"], forged["signature"], pem)
    with pytest.raises(ValueError):
        verify_receipt(receipt, signed["signature"], "not a key")


async def test_a_signature_for_another_document_type_is_no_receipt(client, clinic):
    keys = client.server.app[RUNTIME].keys
    pem = await keys.public_key_pem()
    checkpoint_like = {"type": "audit_checkpoint", "tenant_id": clinic.id, "seq": 3, "hash": "ab" * 32}
    signed = sign_document(checkpoint_like, private_key=await keys.signing_key())
    assert not verify_receipt(signed["document"], signed["signature"], pem)


async def test_patient_ref_is_stable_keyed_per_tenant_and_hides_the_id(client, clinic, other_clinic):
    keys = client.server.app[RUNTIME].keys
    patient_id = await new_patient(client, clinic)
    ref = await patient_ref(keys, clinic.id, patient_id)
    assert ref.startswith("hmac-sha256:") and len(ref) == len("hmac-sha256:") + 64
    assert patient_id not in ref
    assert await patient_ref(keys, clinic.id, patient_id) == ref
    assert await patient_ref(keys, other_clinic.id, patient_id) != ref


def test_receipt_fields_are_checked():
    now = utcnow()
    base = dict(tenant_id="t", patient_ref="p", destroyed_key_ids=["k"], object_count=0, requested_at=now,
                completed_at=now, legal_hold_checked=True, backup_window_days=35)
    assert build_erasure_receipt(**base)["irrecoverable_after"].endswith("Z")
    for bad in (dict(completed_at=now - timedelta(seconds=5)), dict(requested_at=now.replace(tzinfo=None)),
                dict(object_count=-1), dict(destroyed_key_ids=[""]), dict(backup_window_days=0)):
        with pytest.raises(ValueError):
            build_erasure_receipt(**{**base, **bad})


async def test_verify_receipt_cli_with_the_published_key_or_the_key_store(client, clinic, settings, tmp_path, monkeypatch):
    _, _, signed = await _erase(client, clinic, settings)
    pem_file = tmp_path / "vault-receipts.pem"
    pem_file.write_text((await (await client.get("/v1/erasure-receipts/public-key")).json())["public_key_pem"])
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(signed))
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**signed, "receipt": {**signed["receipt"], "object_count": 0}}))
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")

    ok = await run_cli(settings, "keys", "verify-receipt", str(good), "--public-key", str(pem_file), monkeypatch=monkeypatch)
    assert ok.code == 0 and ok.out.startswith("valid erasure receipt"), ok
    bad = await run_cli(settings, "keys", "verify-receipt", str(edited), "--public-key", str(pem_file), monkeypatch=monkeypatch)
    assert bad.code == 1 and bad.out.startswith("INVALID")
    junk = await run_cli(settings, "keys", "verify-receipt", str(garbage), "--public-key", str(pem_file), monkeypatch=monkeypatch)
    assert junk.code == 1 and junk.out.startswith("INVALID")
    from_store = await run_cli(settings, "keys", "verify-receipt", str(good), monkeypatch=monkeypatch)
    assert from_store.code == 0, from_store
