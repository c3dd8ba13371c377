"""``media.created`` and ``media.ready`` webhooks: a photo is ready when its upload commits,
a video when its finishing job does (not when the face search job runs). Ids only, through
the same signed, retried delivery path as the recall notices."""

from __future__ import annotations

import io
import json

from sqlalchemy import select

from tests.pipeline.videos import make_video
from tests.support.jobs import drain
from tests.webhooks.test_delivery import HEX_ID, Receiver, _db, serve, settled, verify, work
from vault.appkeys import RUNTIME
from vault.webhooks.models import WebhookEvent

from tests.webhooks.test_delivery import api, settings  # noqa: F401  (fixtures: loopback http on)


async def events(client, tenant_id: str) -> list[dict]:
    async with _db(client).session() as session:
        rows = (await session.execute(select(WebhookEvent).where(WebhookEvent.tenant_id == tenant_id)
                                      .order_by(WebhookEvent.created_at, WebhookEvent.id))).scalars()
        return [json.loads(r.body) for r in rows]


def ids_only(event: dict) -> None:
    for key, value in event.items():
        if key in ("type", "created_at", "kind") or (key == "treatment_id" and value is None):
            continue
        assert HEX_ID.match(value), key


async def test_a_photo_upload_sends_created_and_ready(api, client, clinic, settings, aiohttp_server):
    receiver = Receiver()
    resp = await client.put("/v1/webhooks", json={"urls": [await serve(aiohttp_server, receiver)]}, headers=clinic.auth("admin"))
    secret = (await resp.json())["secret"]
    pid = await api.patient()
    photo = await api.photo(pid)
    await work(settings, until=settled(clinic.id))

    got = {headers["X-Vault-Event"]: (headers, json.loads(body), body) for headers, body in receiver.seen}
    assert sorted(got) == ["media.created", "media.ready"]
    for kind, (headers, event, raw) in got.items():
        assert verify(secret, headers, raw) and event["type"] == kind
        assert (event["media_id"], event["patient_id"], event["kind"]) == (photo["id"], pid, "photo")
        assert set(event) == {"id", "type", "tenant_id", "created_at", "media_id", "patient_id", "treatment_id", "kind"}
        ids_only(event)


async def test_a_video_is_ready_when_its_finishing_job_commits(api, client, clinic, settings, aiohttp_server):
    receiver = Receiver()
    await client.put("/v1/webhooks", json={"urls": [await serve(aiohttp_server, receiver)]}, headers=clinic.auth("admin"))
    pid = await api.patient()
    resp = await client.post(f"/v1/patients/{pid}/media", data=io.BytesIO(make_video(seconds=1, metadata="udta")),
                             params={"phase": "before"}, headers={**clinic.auth("practitioner"), "Content-Type": "video/quicktime"})
    assert resp.status == 201, await resp.text()
    video = await resp.json()
    assert [(e["type"], e["media_id"], e["kind"]) for e in await events(client, clinic.id)] == [("media.created", video["id"], "video")]

    await drain(client.server.app[RUNTIME], "media.finish_video", "media.shred_blob", timeout=120, due_only=True)
    ready = [e for e in await events(client, clinic.id) if e["type"] == "media.ready"]
    assert [(e["media_id"], e["patient_id"], e["kind"]) for e in ready] == [(video["id"], pid, "video")]
    ids_only(ready[0])
    await work(settings, until=settled(clinic.id))
    assert sorted(h["X-Vault-Event"] for h, _ in receiver.seen) == ["media.created", "media.ready"]


async def test_no_endpoint_no_media_event(api, client, clinic):
    await api.photo(await api.patient())
    assert await events(client, clinic.id) == []
