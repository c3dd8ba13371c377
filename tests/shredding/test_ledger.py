"""The shred ledger: ids of destroyed keys in the metadata database, never key bytes."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update

from keys.errors import KeyDestroyed
from keys.models import object_keys, patient_deks
from tests.shredding.support import fetch_all, keystore_engine, new_patient, upload_photo
from vault.appkeys import RUNTIME
from vault.media.models import MediaBlob
from vault.patients.models import ERASED, Patient
from vault.sealed import SealedBlobs
from vault.shredding.models import ShredRecord
from vault.shredding.service import ShredLedger, reconcile, shred_object, shred_patient


def _ledger(client) -> ShredLedger:
    app = client.server.app
    return ShredLedger(app[RUNTIME].db, app[RUNTIME].keys)


async def _blob_ids(db, media_id: str) -> list[str]:
    async with db.session() as s:
        return list((await s.execute(select(MediaBlob.id).where(MediaBlob.media_id == media_id))).scalars())


async def _key_material(client, settings, tenant_id: str, patient_id: str, object_ids: list[str]) -> list[bytes]:
    """Every raw and wrapped key of the patient, read before the shred."""
    keys = client.server.app[RUNTIME].keys
    patient = await keys.patient_key(tenant_id, patient_id)
    material = [patient.key]
    for object_id in object_ids:
        material.append(bytes(await keys.object_key(tenant_id, patient_id, object_id)))
    engine = keystore_engine(settings)
    try:
        async with engine.connect() as conn:  # the wrapped forms, as stored
            for table in (patient_deks, object_keys):
                query = select(table.c.wrapped).where(table.c.tenant_id == tenant_id, table.c.patient_id == patient_id)
                material += list((await conn.execute(query)).scalars())
    finally:
        await engine.dispose()
    return material


async def _all_ledger_cells(db) -> list[object]:
    async with db.session() as s:
        rows = (await s.execute(text("SELECT * FROM shred_ledger"))).all()
    return [cell for row in rows for cell in row]


async def test_patient_shred_records_every_key_id_and_no_key_bytes(client, clinic, settings):
    app = client.server.app
    db, keys = app[RUNTIME].db, app[RUNTIME].keys
    patient_id = await new_patient(client, clinic)
    media = [await upload_photo(client, clinic, patient_id, seed=i) for i in range(2)]
    object_ids = [bid for m in media for bid in await _blob_ids(db, m)]
    assert len(object_ids) == 6  # original + two thumbnails each
    dek_id = (await keys.patient_key(clinic.id, patient_id)).dek_id
    material = await _key_material(client, settings, clinic.id, patient_id, object_ids)
    assert len(material) == 1 + 6 + 1 + 6

    destroyed = await shred_patient(db, keys, clinic.id, patient_id, cause="erasure")

    assert destroyed == [dek_id]  # the object keys die with the DEK that wraps them
    # one row whatever the number of photos: re-shredding a DEK id takes its object keys too
    (record,) = await _ledger(client).records(clinic.id, patient_id)
    assert (record.kind, record.key_id, record.tenant_id, record.patient_id, record.object_id, record.cause) == (
        "patient_dek", dek_id, clinic.id, patient_id, None, "erasure")
    assert record.destroyed_at is not None
    # the ledger holds ids and times only: no raw or wrapped key, in any encoding
    cells = await _all_ledger_cells(db)
    assert all(isinstance(c, (str, type(None))) or hasattr(c, "isoformat") for c in cells)
    blob = " ".join(str(c) for c in cells).encode()
    for secret in material:
        assert len(secret) >= 32
        assert secret not in blob and secret.hex().encode() not in blob
    with pytest.raises(KeyDestroyed):
        await keys.patient_key(clinic.id, patient_id)
    for object_id in object_ids:
        with pytest.raises(KeyDestroyed):
            await keys.object_key(clinic.id, patient_id, object_id)
    # (thumbnail: the content route resolves the key only after sending headers)
    resp = await client.get(f"/v1/media/{media[0]}/thumbnail?size=256", headers=clinic.auth("records"))
    assert resp.status == 410
    # idempotent: nothing more to destroy, nothing recorded twice
    assert await shred_patient(db, keys, clinic.id, patient_id, cause="erasure") == []
    assert len(await _ledger(client).records(clinic.id, patient_id)) == 1


async def test_object_shred_leaves_the_patients_other_objects_readable(client, clinic):
    app = client.server.app
    db, keys = app[RUNTIME].db, app[RUNTIME].keys
    patient_id = await new_patient(client, clinic)
    first, second = await upload_photo(client, clinic, patient_id, seed=1), await upload_photo(client, clinic, patient_id, seed=2)
    before = await fetch_all(client, clinic, second)
    original = (await _blob_ids(db, first))[0]
    key_id = (await keys.object_key(clinic.id, patient_id, original)).key_id

    assert await shred_object(db, keys, clinic.id, patient_id, original, cause="object_delete") == key_id
    assert await shred_object(db, keys, clinic.id, patient_id, original, cause="object_delete") is None

    (record,) = await _ledger(client).records(clinic.id, patient_id)
    assert (record.kind, record.key_id, record.object_id, record.cause) == ("object", key_id, original, "object_delete")
    assert await fetch_all(client, clinic, second) == before
    with pytest.raises(KeyDestroyed):
        await keys.object_key(clinic.id, patient_id, original)


async def test_sealed_blobs_record_deletes_and_upload_rollbacks(client, clinic):
    app = client.server.app
    db, keys = app[RUNTIME].db, app[RUNTIME].keys
    ledger = ShredLedger(db, keys)
    sealed = SealedBlobs(keys, app[RUNTIME].store, ledger=ledger)
    patient_id = await new_patient(client, clinic)

    ref = await sealed.put_bytes(clinic.id, patient_id, b"clinical bytes" * 100)
    kept = await sealed.put_bytes(clinic.id, patient_id, b"other bytes" * 100)
    key_id = (await keys.object_key(clinic.id, patient_id, ref.id)).key_id
    await sealed.destroy(ref)

    class Interrupted(Exception):
        pass

    async def failing_stream():
        yield b"x" * 1000
        raise Interrupted

    with pytest.raises(Interrupted):
        await sealed.put_stream(clinic.id, patient_id, failing_stream())

    records = await ledger.records(clinic.id, patient_id)
    assert sorted((r.cause, r.kind) for r in records) == [("object_delete", "object"), ("upload_rollback", "object")]
    deleted = next(r for r in records if r.cause == "object_delete")
    assert (deleted.key_id, deleted.object_id) == (key_id, ref.id)
    assert await sealed.read(kept) == b"other bytes" * 100


async def test_a_crash_between_shred_and_ledger_is_reconciled(client, clinic):
    """The key store commits, the process dies before the ledger row: the erased patient
    gets a marker row (its ids are gone with the keys) and is never repaired twice."""
    app = client.server.app
    db, keys = app[RUNTIME].db, app[RUNTIME].keys
    patient_id = await new_patient(client, clinic)
    await upload_photo(client, clinic, patient_id)
    await keys.destroy_patient(clinic.id, patient_id)  # ... then kill -9
    async with db.transaction() as s:  # what the lifecycle's erasure marks
        await s.execute(update(Patient).where(Patient.id == patient_id).values(status=ERASED))

    assert await reconcile(db, keys) >= 1
    (marker,) = await _ledger(client).records(clinic.id, patient_id)
    assert (marker.kind, marker.key_id, marker.cause) == ("patient_dek", None, "erasure")
    assert await reconcile(db, keys, patients=[(clinic.id, patient_id)]) == 0
    async with db.session() as s:
        uncovered = (await s.execute(
            select(Patient.id).where(Patient.status == ERASED).where(
                ~select(ShredRecord.id).where(ShredRecord.patient_id == Patient.id, ShredRecord.kind == "patient_dek").exists()
            )
        )).all()
    assert uncovered == []


async def test_unknown_cause_is_refused_before_anything_is_destroyed(client, clinic):
    app = client.server.app
    patient_id = await new_patient(client, clinic)
    with pytest.raises(ValueError, match="cause"):
        await shred_patient(app[RUNTIME].db, app[RUNTIME].keys, clinic.id, patient_id, cause="tidy-up")
    assert (await app[RUNTIME].keys.patient_key(clinic.id, patient_id)).dek_id
