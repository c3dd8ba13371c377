"""Idempotency-Key on releases: a retried release answers with the first one and makes
no second release (so no second recall entry); the same key with another body is 409."""

from __future__ import annotations

import pytest

from tests.consent.conftest import Api


@pytest.fixture
def api(client, clinic) -> Api:
    return Api(client, clinic)


async def release(api: Api, media_id: str, *, key: str | None, recipient: str = "Journal of Skin", role: str = "marketing"):
    headers = {**api.clinic.auth(role), **({"Idempotency-Key": key} if key else {})}
    return await api.client.post(f"/v1/media/{media_id}/releases", json={"purpose": "education", "recipient": recipient},
                                 headers=headers)


async def releases_of(api: Api, media_id: str) -> list[dict]:
    resp = await api.client.get("/v1/releases", params={"media_id": media_id}, headers=api.clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]


async def test_a_retried_release_makes_one_release_and_one_recall_entry(api):
    pid = await api.patient()
    photo = await api.photo(pid)
    grant = await api.consent(pid)
    first = await release(api, photo["id"], key="retry-1")
    assert first.status == 201, await first.text()
    again = await release(api, photo["id"], key="retry-1")
    assert again.status == 201
    a, b = await first.json(), await again.json()
    assert a == b  # the same release, the same answer (its one download link included)
    assert [r["id"] for r in await releases_of(api, photo["id"])] == [a["id"]]

    conflict = await release(api, photo["id"], key="retry-1", recipient="Someone else")
    assert conflict.status == 409 and (await conflict.json())["error"] == "idempotency_conflict"
    other = await release(api, photo["id"], key="retry-2")
    assert other.status == 201 and (await other.json())["id"] != a["id"]
    unkeyed = await release(api, photo["id"], key=None)
    assert unkeyed.status == 201
    assert len(await releases_of(api, photo["id"])) == 3

    withdrawn = await api.withdraw(grant["id"])  # one recall entry per release: three, not four
    assert sorted(r["id"] for r in withdrawn["recall"]) == sorted(r["id"] for r in await releases_of(api, photo["id"]))


async def test_keys_are_scoped_to_the_token_and_the_item(api, client):
    from vault.appkeys import RUNTIME

    made = await client.server.app[RUNTIME].tenants.create_token(api.clinic.slug, "marketing", label="second", request_id="t")
    pid = await api.patient()
    one, two = await api.photo(pid), await api.photo(pid)
    await api.consent(pid)
    a = await (await release(api, one["id"], key="k")).json()
    b = await release(api, two["id"], key="k")  # the same key for another item: another request
    assert b.status == 201 and (await b.json())["id"] != a["id"]
    c = await api.client.post(f"/v1/media/{one['id']}/releases", json={"purpose": "education", "recipient": "Journal of Skin"},
                              headers={"Authorization": f"Bearer {made.token}", "Idempotency-Key": "k"})  # another token
    assert c.status == 201 and (await c.json())["id"] != a["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "bad key"])
async def test_a_bad_key_is_422_and_makes_nothing(api, key):
    pid = await api.patient()
    photo = await api.photo(pid)
    await api.consent(pid)
    resp = await api.client.post(f"/v1/media/{photo['id']}/releases", json={"purpose": "education", "recipient": "J"},
                                 headers={**api.clinic.auth("marketing"), "Idempotency-Key": key})
    assert resp.status == 422
    assert await releases_of(api, photo["id"]) == []


async def test_a_retried_consent_records_one_grant(api):
    pid = await api.patient()
    photo = await api.photo(pid)
    body = {"purposes": ["education", "social_media"], "identifiable": True, "media_ids": [photo["id"]], "notes": "signed"}
    headers = {**api.clinic.auth("dpo"), "Idempotency-Key": "consent-1"}
    first = await api.client.post(f"/v1/patients/{pid}/consents", json=body, headers=headers)
    again = await api.client.post(f"/v1/patients/{pid}/consents", json={**body, "purposes": ["social_media", "education"]},
                                  headers=headers)
    assert first.status == again.status == 201
    made = await first.json()
    assert (await again.json())["id"] == made["id"]
    history = await (await api.client.get(f"/v1/patients/{pid}/consents", headers=api.clinic.auth("dpo"))).json()
    assert [c["id"] for c in (history["items"] if isinstance(history, dict) else history)] == [made["id"]]
    conflict = await api.client.post(f"/v1/patients/{pid}/consents", json={**body, "notes": "other"}, headers=headers)
    assert conflict.status == 409 and (await conflict.json())["error"] == "idempotency_conflict"
    other = await api.client.post(f"/v1/patients/{await api.patient()}/consents", json={"purposes": ["education"],
                                  "identifiable": True}, headers=headers)  # the same key for another patient
    assert other.status == 201 and (await other.json())["id"] != made["id"]


async def test_a_retried_export_starts_one_export(api):
    from sqlalchemy import select

    from vault.appkeys import RUNTIME
    from vault.lifecycle.models import Export

    pid = await api.patient()
    headers = {**api.clinic.auth("dpo"), "Idempotency-Key": "export-1"}
    first = await api.client.post(f"/v1/patients/{pid}/exports", headers=headers)
    again = await api.client.post(f"/v1/patients/{pid}/exports", headers=headers)
    assert first.status == again.status == 202, await first.text()
    assert (await again.json())["id"] == (await first.json())["id"]
    other = await api.client.post(f"/v1/patients/{pid}/exports", headers={**headers, "Idempotency-Key": "export-2"})
    assert (await other.json())["id"] != (await first.json())["id"]
    async with api.client.server.app[RUNTIME].db.session() as session:
        ids = (await session.execute(select(Export.id).where(Export.patient_id == pid))).scalars().all()
    assert len(ids) == 2
