"""Recall take-down (issue 18): the recall list by state, recording who confirmed a
recalled image removed and when, and the re-notification of recalls left open."""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import delete, select

from tests.consent.conftest import face_jpeg
from vault.appkeys import RUNTIME
from vault.audit.models import AuditEntry
from vault.consent.models import Release
from vault.db import new_id, utcnow
from vault.jobs.models import Job
from vault.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
import workers.jobs.releases  # noqa: F401  (registers the periodic job)
from workers.registry import registry


async def _releases(client, clinic, role: str = "marketing", **params) -> list[dict]:
    resp = await client.get("/v1/releases", params={"limit": "200", **params}, headers=clinic.auth(role))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]


async def _takedown(client, clinic, release_id: str, role: str = "marketing"):
    return await client.post(f"/v1/releases/{release_id}/takedown", headers=clinic.auth(role))


async def test_recall_list_by_state_and_takedown_recorded(api, client, clinic, other_clinic):
    pid = await api.patient()
    other_pid = await api.patient()
    photo, kept = await api.photo(pid), await api.photo(other_pid)
    grant = await api.consent(pid, purposes=["education"], identifiable=True)
    await api.consent(other_pid, purposes=["education"], identifiable=True)
    released, other = await api.release(photo["id"]), await api.release(kept["id"])

    assert (await _releases(client, clinic, state="recalled")) == []
    # Not recalled: nothing to take down (409), and an unknown id or another tenant's is 404.
    assert (await _takedown(client, clinic, released["id"])).status == 409
    assert (await _takedown(client, clinic, new_id())).status == 404
    await api.withdraw(grant["id"])
    assert (await _takedown(client, other_clinic, released["id"])).status == 404

    recalled = await _releases(client, clinic, state="recalled")
    assert [r["id"] for r in recalled] == [released["id"]]
    assert recalled[0]["recalled_at"] and recalled[0]["taken_down_at"] is None
    assert other["id"] not in {r["id"] for r in recalled}
    assert await _releases(client, clinic, state="taken_down") == []

    resp = await _takedown(client, clinic, released["id"])
    assert resp.status == 201, await resp.text()
    done = await resp.json()
    assert done["id"] == released["id"] and done["taken_down_at"] and done["taken_down_by"]
    assert "patient_id" not in done  # marketing works with media, never with patients
    # The first confirmation stands.
    again = await _takedown(client, clinic, released["id"], role="dpo")
    assert again.status == 409 and (await again.json())["details"]["reason"] == "already_taken_down"

    assert await _releases(client, clinic, state="recalled") == []
    listed = await _releases(client, clinic, role="dpo", state="taken_down")
    assert [r["id"] for r in listed] == [released["id"]] and listed[0]["taken_down_by"] == done["taken_down_by"]
    assert listed[0]["patient_id"] == pid
    async with client.server.app[RUNTIME].db.session() as session:
        entries = (await session.execute(select(AuditEntry).where(AuditEntry.tenant_id == clinic.id,
                                                                  AuditEntry.action == "release.takedown"))).scalars().all()
    assert len(entries) == 1 and entries[0].actor == done["taken_down_by"] and entries[0].role == "marketing"


async def test_deidentified_recall_is_listed_and_taken_down_by_handle_only(api, client, clinic):
    pid = await api.patient()
    photo = await api.photo(pid, face_jpeg())
    grant = await api.consent(pid, purposes=["social_media"], identifiable=False)
    await api.approve(photo["id"])
    handle = await api.handle(photo["id"], "social_media")
    made = await api.release(handle, purpose="social_media")
    await api.withdraw(grant["id"])

    [recalled] = [r for r in await _releases(client, clinic, state="recalled") if r["id"] == made["id"]]
    assert recalled["handle"] == handle
    for hidden in ("media_id", "patient_id", "consent_id", "approval_id"):
        assert hidden not in recalled
    resp = await _takedown(client, clinic, made["id"])
    assert resp.status == 201, await resp.text()
    done = await resp.json()
    assert done["handle"] == handle and not {"media_id", "patient_id", "consent_id", "approval_id"} & done.keys()
    assert photo["id"] not in json.dumps(done) and pid not in json.dumps(done)


async def test_bad_state_is_422(client, clinic):
    resp = await client.get("/v1/releases", params={"state": "open"}, headers=clinic.auth("marketing"))
    assert resp.status == 422
    resp = await client.get("/v1/releases", params={"recalled": "true"}, headers=clinic.auth("marketing"))
    assert resp.status == 422


async def test_open_recalls_are_renotified_until_taken_down(api, client, clinic):
    runtime = client.server.app[RUNTIME]
    assert "releases.renotify_recalls" in registry.kinds
    pid = await api.patient()
    photo = await api.photo(pid)
    grant = await api.consent(pid, purposes=["education"], identifiable=True)
    first, second = await api.release(photo["id"]), await api.release(photo["id"], recipient="Another journal")
    await api.withdraw(grant["id"])
    async with runtime.db.transaction() as session:
        session.add(WebhookEndpoint(id=new_id(), tenant_id=clinic.id, url="https://records.clinic.example/hook",
                                    created_by="test"))
    after = timedelta(hours=runtime.settings.recall_renotify_hours)
    try:
        # Not yet due: nothing for this tenant.
        await runtime.consents.renotify_open_recalls(after=after)
        assert await _events(runtime, clinic.id) == []
        later = utcnow() + after + timedelta(minutes=1)
        await runtime.consents.renotify_open_recalls(after=after, now=later)
        [event] = await _events(runtime, clinic.id)
        assert event["type"] == "release.recall_open"
        assert sorted(event["release_ids"]) == sorted([first["id"], second["id"]])
        assert event["media_ids"] == [photo["id"]] and event["patient_ids"] == [pid]
        # Once per period: a second run at the same time sends nothing new.
        await runtime.consents.renotify_open_recalls(after=after, now=later)
        assert len(await _events(runtime, clinic.id)) == 1
        # A taken-down recall is no longer re-notified; the other still is, a period later.
        assert (await _takedown(client, clinic, first["id"])).status == 201
        await runtime.consents.renotify_open_recalls(after=after, now=later + after + timedelta(minutes=1))
        events = await _events(runtime, clinic.id)
        assert len(events) == 2 and events[-1]["release_ids"] == [second["id"]]
    finally:  # no delivery of ours may outlive the test
        async with runtime.db.transaction() as session:
            ids = (await session.execute(select(WebhookDelivery.id).where(WebhookDelivery.tenant_id == clinic.id))).scalars().all()
            for delivery_id in ids:
                await session.execute(delete(Job).where(Job.kind == "webhooks.deliver", Job.payload.contains(delivery_id)))
    async with runtime.db.session() as session:
        row = await session.get(Release, second["id"])
        assert row is not None and row.recall_renotified_at is not None


async def _events(runtime, tenant_id: str) -> list[dict]:
    async with runtime.db.session() as session:
        rows = (await session.execute(select(WebhookEvent).where(WebhookEvent.tenant_id == tenant_id,
                                                                 WebhookEvent.kind == "release.recall_open")
                                      .order_by(WebhookEvent.created_at))).scalars().all()
    return [json.loads(r.body) for r in rows]
