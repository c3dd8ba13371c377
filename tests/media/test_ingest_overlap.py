"""A photo upload stores its stripped original while the decoder worker still decodes
(issue 15 item 3): when the decode then fails, what was stored is shredded and deleted
before the 4xx, and the shred ledger says so."""

from __future__ import annotations

import dataclasses

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
