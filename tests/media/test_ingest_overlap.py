"""A photo upload stores its stripped original while the decoder worker still decodes
(issue 15 item 3): when the decode then fails, what was stored is shredded and deleted
before the 4xx, and the shred ledger says so."""

from __future__ import annotations

import dataclasses
import io

import pytest
from sqlalchemy import text

from tests.http.test_bad_input import counts, new_patient, still_answers
from tests.media.test_decoders import MEMORY_BOUND, bomb_png
from vault.appkeys import RUNTIME


@pytest.fixture
async def app(settings):
    from vault.app import create_app

    # Upload workers bounded below what a 10,000 px square decodes to (300 MB and copies).
    return create_app(dataclasses.replace(settings, decoder_memory_bytes=MEMORY_BOUND))


async def test_a_photo_that_fails_after_its_original_was_stored_leaves_nothing(client, clinic, settings):
    pid = await new_patient(client, clinic)
    before = await counts(client, settings)
    resp = await client.post(f"/v1/patients/{pid}/media", data=bomb_png(10_000),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/png"})
    assert resp.status == 422, await resp.text()
    assert await counts(client, settings) == before  # no media or blob row, no blob file
    async with client.server.app[RUNTIME].db.session() as s:
        causes = (await s.execute(text("SELECT cause FROM shred_ledger WHERE patient_id = :p"), {"p": pid})).scalars().all()
        leases = (await s.execute(text("SELECT COUNT(*) FROM blob_writes WHERE patient_id = :p"), {"p": pid})).scalar()
    # The original and both thumbnail slots had keys (one commit), all shredded; no lease left.
    assert sorted(causes) == ["upload_rollback"] * 3
    assert leases == 0
    await still_answers(client)


def _jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(out, "JPEG")
    return out.getvalue()


async def _erase(client, clinic, patient_id: str) -> None:
    resp = await client.post(f"/v1/patients/{patient_id}/erasure", json={"reason": "Art. 17 request"},
                             headers=clinic.auth("erasure"))
    assert resp.status == 200, await resp.text()


async def _refused_as_erased_leaving_nothing(client, clinic, settings, pid: str) -> None:
    """Upload a photo for ``pid`` (erased meanwhile by the test's hook): 410
    ``patient_erased``, no media, blob or file left, no lease."""
    before = await counts(client, settings)
    resp = await client.post(f"/v1/patients/{pid}/media", data=_jpeg(),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 410, await resp.text()
    assert (await resp.json())["error"] == "patient_erased"
    assert await counts(client, settings) == before
    async with client.server.app[RUNTIME].db.session() as s:
        leases = (await s.execute(text("SELECT COUNT(*) FROM blob_writes WHERE patient_id = :p"), {"p": pid})).scalar()
    assert leases == 0
    await still_answers(client)


async def test_a_patient_erased_after_the_target_check_gets_410_and_leaves_nothing(client, clinic, settings, monkeypatch):
    """The target is checked once, before the body is read: an erasure that lands after
    that check (here: while the client would still be sending) fails the upload with 410
    when the key store refuses the new object keys, and nothing is left behind."""
    pid = await new_patient(client, clinic)
    media = client.server.app[RUNTIME].media
    check_target = media.check_target

    async def erased_after_the_check(actor, patient_id, treatment_id):
        target = await check_target(actor, patient_id, treatment_id)
        await _erase(client, clinic, patient_id)
        return target

    monkeypatch.setattr(media, "check_target", erased_after_the_check)
    await _refused_as_erased_leaving_nothing(client, clinic, settings, pid)


async def test_a_patient_erased_after_the_keys_were_reserved_gets_410_and_leaves_nothing(client, clinic, settings,
                                                                                        monkeypatch):
    """An erasure that lands after the upload's object keys were reserved and its original
    stored: sealing the capture finds the patient's key destroyed. 410, as an erasure
    found earlier is, and the reserved keys and stored blobs are shredded (was a 500)."""
    pid = await new_patient(client, clinic)
    sealed = client.server.app[RUNTIME].media.sealed
    put_reserved = sealed.put_reserved
    erased: list[bool] = []

    async def erased_after_the_original(slot, data):
        ref = await put_reserved(slot, data)
        if not erased:
            erased.append(True)
            await _erase(client, clinic, pid)
        return ref

    monkeypatch.setattr(sealed, "put_reserved", erased_after_the_original)
    await _refused_as_erased_leaving_nothing(client, clinic, settings, pid)
