"""The single-photo and rectification trap, end to end through the vault: a copy of the
key store and the metadata taken before a photo is deleted and a field corrected; the
next rotation renews the patient's DEK (resealing every sealed column), the old epoch is
destroyed, and the copy's object key and old value no longer open with the live keys,
while the patient's other photo, fields and treatment still read live."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import select

from keys import aead
from keys.errors import IntegrityError
from keys.models import object_keys
from vault.actor import Actor
from vault.appkeys import RUNTIME
from vault.db import utcnow
from vault.keyops import KeyOperations
from vault.media.models import MediaBlob
from vault.patients.models import Patient
from vault.receipts import AWAITING_RENEWAL
from vault.sealed_fields import SEALED_COLUMNS
from tests.shredding.support import fetch_all, keystore_engine, upload_photo


def _opens(key: bytes, sealed: bytes, associated: bytes) -> bool:
    try:
        aead.open_sealed(key, sealed, associated)
        return True
    except IntegrityError:
        return False


async def test_deleted_photo_and_corrected_field_die_with_the_old_epoch(client, clinic, settings):
    rt = client.server.app[RUNTIME]
    resp = await client.post("/v1/patients", json={"external_ref": "MRN-renew", "display_name": "Ada Example",
                                                   "notes": "old diagnosis"}, headers=clinic.auth("practitioner"))
    assert resp.status == 201, await resp.text()
    patient = (await resp.json())["id"]
    resp = await client.post(f"/v1/patients/{patient}/treatments", headers=clinic.auth("practitioner"),
                             json={"name": "peel", "performed_on": "2026-11-01", "details": "left cheek"})
    assert resp.status == 201, await resp.text()
    treatment = (await resp.json())["id"]
    deleted, kept = await upload_photo(client, clinic, patient, seed=1), await upload_photo(client, clinic, patient, seed=2)
    kept_before = await fetch_all(client, clinic, kept)

    # The copy: the deleted photo's wrapped object keys and the old sealed notes.
    async with rt.db.session() as session:
        blob_ids = list((await session.execute(select(MediaBlob.id).where(MediaBlob.media_id == deleted))).scalars())
        old_notes = (await session.get(Patient, patient)).notes
    engine = keystore_engine(settings)
    async with engine.connect() as conn:
        copy_keys = (await conn.execute(sa.select(object_keys).where(object_keys.c.object_id.in_(blob_ids)))).all()
    await engine.dispose()
    assert len(copy_keys) == len(blob_ids) >= 3

    shred_at = utcnow()
    resp = await client.delete(f"/v1/media/{deleted}", headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["irrecoverable_after"] is None and body["no_date_reason"] == AWAITING_RENEWAL
    resp = await client.patch(f"/v1/patients/{patient}", json={"notes": "corrected diagnosis"},
                              headers=clinic.auth("practitioner"))
    assert resp.status == 200, await resp.text()
    assert await rt.keys.pending_renewals(clinic.id) == [patient]

    actor = Actor.cli(clinic.id, "test")
    ops = KeyOperations(keys=rt.keys, audit=rt.audit, ledger=rt.ledger)
    await ops.rotate(clinic.id, actor=actor)
    assert await rt.keys.pending_renewals(clinic.id) == []
    v1, _v2 = await rt.keys.kek_versions(clinic.id)
    schedule = await rt.keys.renewal_schedule(clinic.id, patient, since=shred_at)
    assert schedule.irrecoverable_after == v1.destroy_after and not schedule.awaiting_renewal
    await ops.destroy_version(clinic.id, 1, actor=actor, force=True)

    live = (await rt.keys.patient_key(clinic.id, patient)).key
    for row in copy_keys:
        assert not _opens(live, row.wrapped, aead.aad(aead.LABEL_OBJECT_KEY, clinic.id, patient, row.object_id,
                                                      row.dek_id, row.key_id))
    assert not _opens(live, old_notes, aead.aad(aead.LABEL_FIELD, clinic.id, patient, "patients", "notes", patient))

    # Everything else reads live.
    view = await (await client.get(f"/v1/patients/{patient}", headers=clinic.auth("records"))).json()
    assert (view["notes"], view["display_name"], view["external_ref"]) == ("corrected diagnosis", "Ada Example", "MRN-renew")
    assert await fetch_all(client, clinic, kept) == kept_before
    treatments = await (await client.get(f"/v1/patients/{patient}/treatments", headers=clinic.auth("records"))).json()
    assert [(t["id"], t["details"]) for t in treatments["items"]] == [(treatment, "left cheek")]
    found = await (await client.get("/v1/patients?external_ref=MRN-renew", headers=clinic.auth("records"))).json()
    assert [p["id"] for p in found["items"]] == [patient]


def test_every_sealed_column_is_resealed() -> None:
    """A model column holding patient-DEK ciphertext must be in SEALED_COLUMNS, or a
    renewal would leave it under the old DEK (and unreadable)."""
    from vault.db import Base
    from vault.webhooks.models import WebhookSecret  # noqa: F401  (sealed under a tenant key, not a DEK)
    from vault.lifecycle.models import ErasureRequest  # noqa: F401

    # Sealed under tenant keys, not a patient's DEK: erasure reasons (the epoch), webhook
    # secrets and staff TOTP secrets (vault/staff: a long-lived purpose key of its own).
    not_dek = {("erasure_requests", "reason"), ("webhook_secrets", "sealed"),
               ("staff_accounts", "totp_sealed"), ("staff_enrolments", "totp_sealed")}
    listed = {(spec.model.__tablename__, c) for spec in SEALED_COLUMNS for c in spec.columns}
    binary = {(t.name, c.name) for t in Base.metadata.sorted_tables for c in t.columns
              if isinstance(c.type, sa.LargeBinary)}
    assert binary - not_dek == listed
