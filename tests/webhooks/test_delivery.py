"""Webhook deliveries end to end: a withdrawal enqueues them in its transaction, the real
job handler runs in a worker, the receiver is a local aiohttp server on 127.0.0.1
(``VAULT_WEBHOOKS_ALLOW_HTTP_LOOPBACK`` on). Signed over timestamp and body, retried on
failure, ids only in the body, no redirect followed, refused again at delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import time
from datetime import timedelta

import pytest
from aiohttp import web
from sqlalchemy import select

from tests.consent.conftest import Api
from vault.db import Database
from vault.runtime import runtime
from vault.webhooks import delivery
from vault.webhooks.models import WebhookDelivery, WebhookSecret
from workers.jobs.webhooks import deliver_webhook, give_up_delivery
from workers.registry import Backoff, Registry
from workers.runner import Worker

FAST = Backoff(base=timedelta(milliseconds=20), cap=timedelta(milliseconds=50))
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
RECIPIENT = "Dermatology congress, Dr. Jane Receiver"


@pytest.fixture
def settings(settings):
    return settings.replace(webhooks_allow_http_loopback=True)


@pytest.fixture
def api(client, clinic) -> Api:
    return Api(client, clinic)


class Receiver:
    """Records every request; answers with the scripted statuses, then 200."""

    def __init__(self, *statuses: int, redirect_to: str | None = None) -> None:
        self.statuses = list(statuses)
        self.redirect_to = redirect_to
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_post("/hook", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        return web.Response(status=status)


async def serve(aiohttp_server, receiver: Receiver) -> str:
    server = await aiohttp_server(receiver.app, host="127.0.0.1")
    return str(server.make_url("/hook"))


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300) -> bool:
    """What a receiver does (docs/consent.md), written independently of the vault's code."""
    fields = dict(part.split("=", 1) for part in headers["X-Vault-Signature"].split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - timestamp) <= tolerance


async def work(settings, *, until, max_attempts: int = 3, timeout: float = 20.0) -> None:
    """Run the real handler in a worker (own runtime, fast backoff) until ``until()`` holds."""
    registry = Registry()
    registry.job("webhooks.deliver", max_attempts=max_attempts, backoff=FAST, on_dead=give_up_delivery)(deliver_webhook)
    async with runtime(settings, group_commit=False) as rt:
        worker = Worker(rt, registry, concurrency=2, lease=timedelta(seconds=30), poll_interval=0.02, shutdown_grace=5, name="webhooks")
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            deadline = time.monotonic() + timeout
            while not await until(rt.db):
                assert time.monotonic() < deadline, "deliveries did not settle"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def deliveries(db: Database, tenant_id: str) -> list[WebhookDelivery]:
    async with db.session() as session:
        return list((await session.execute(select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id))).scalars())


def settled(tenant_id: str):
    async def check(db: Database) -> bool:
        rows = await deliveries(db, tenant_id)
        return bool(rows) and all(r.state in ("delivered", "failed", "cancelled") for r in rows)
    return check


async def a_release(api: Api) -> tuple[dict, dict]:
    """A grant and a release of a new photo: made before the endpoints are configured in the
    tests of recall deliveries, so the photo's own events (media.created, media.ready) are not sent."""
    pid = await api.patient()
    photo = await api.photo(pid)
    grant = await api.consent(pid, notes="note: patient called")
    return grant, await api.release(photo["id"], recipient=RECIPIENT)


async def test_deliveries_are_signed_retried_and_carry_ids_only(api, client, clinic, settings, aiohttp_server):
    flaky, steady = Receiver(500, 503), Receiver()
    grant, release = await a_release(api)
    urls = [await serve(aiohttp_server, flaky), await serve(aiohttp_server, steady)]
    resp = await client.put("/v1/webhooks", json={"urls": urls}, headers=clinic.auth("admin"))
    assert resp.status == 200, await resp.text()
    secret = (await resp.json())["secret"]

    withdrawn = await api.withdraw(grant["id"])
    await work(settings, until=settled(clinic.id))

    assert len(flaky.seen) == 3 and len(steady.seen) == 1  # two failures, then delivered
    bodies = {body for _, body in flaky.seen + steady.seen}
    assert len(bodies) == 1  # the same event body each time; only the timestamp changes
    for headers, body in flaky.seen + steady.seen:
        assert verify(secret, headers, body)
        assert not verify("whsec_wrong", headers, body)
        assert headers["Content-Type"] == "application/json" and headers["X-Vault-Event"] == "consent.withdrawn"
    event = json.loads(bodies.pop())
    assert event["type"] == "consent.withdrawn" and event["consent_id"] == grant["id"]
    assert event["release_ids"] == [release["id"]] and event["withdrawal_id"] == withdrawn["withdrawal"]["id"]
    for key, value in event.items():  # ids, lists of ids, the purposes, the type and the time: nothing else
        values = value if isinstance(value, list) else [value]
        assert all(HEX_ID.match(v) or key in ("type", "created_at", "purposes") for v in values), key
    raw = json.dumps(event)
    assert RECIPIENT not in raw and "patient called" not in raw

    rows = {r.attempts: r for r in await deliveries(_db(client), clinic.id)}
    assert sorted(rows) == [1, 3] and all(r.state == "delivered" for r in rows.values())
    config = await (await client.get("/v1/webhooks", headers=clinic.auth("admin"))).json()
    assert config["deliveries"]["delivered"] == 2
    async with _db(client).session() as session:
        sealed = (await session.execute(select(WebhookSecret.sealed).where(WebhookSecret.tenant_id == clinic.id))).scalar_one()
    assert secret.encode() not in sealed


def _db(client) -> Database:
    from vault.appkeys import RUNTIME

    return client.server.app[RUNTIME].db


async def test_a_redirect_is_never_followed(api, client, clinic, settings, aiohttp_server):
    target = Receiver()
    target_url = await serve(aiohttp_server, target)
    redirecting = Receiver(redirect_to=target_url)
    grant, _ = await a_release(api)
    await client.put("/v1/webhooks", json={"urls": [await serve(aiohttp_server, redirecting)]}, headers=clinic.auth("admin"))
    await api.withdraw(grant["id"])
    await work(settings, until=settled(clinic.id), max_attempts=2)

    assert len(redirecting.seen) == 2 and target.seen == []
    [row] = await deliveries(_db(client), clinic.id)
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("failed", 2, 307, "http_307")


async def test_the_destination_is_checked_again_at_delivery(api, client, clinic, settings, aiohttp_server):
    receiver = Receiver()
    url = (await serve(aiohttp_server, receiver)).replace("http://", "https://")
    grant, _ = await a_release(api)
    assert (await client.put("/v1/webhooks", json={"urls": [url]}, headers=clinic.auth("admin"))).status == 200
    await api.withdraw(grant["id"])
    # The workers run with loopback forbidden (as in production): refused before connecting.
    await work(settings.replace(webhooks_allow_http_loopback=False), until=settled(clinic.id), max_attempts=1)
    [row] = await deliveries(_db(client), clinic.id)
    assert (row.state, row.last_error, row.last_status) == ("failed", "loopback_address", None)
    assert receiver.seen == []


async def test_the_connection_goes_to_the_checked_address_under_the_name(aiohttp_server):
    """DNS rebinding cannot move a delivery: the name is never resolved again."""
    receiver = Receiver()
    server = await aiohttp_server(receiver.app, host="127.0.0.1")
    pinned = delivery.Destination(url=f"http://rebinding.invalid:{server.port}/hook", host="rebinding.invalid", port=server.port,
                                  address="127.0.0.1", family=socket.AF_INET)
    status = await delivery.post(pinned, b"{}", {"Content-Type": "application/json"})
    assert status == 200
    [(headers, body)] = receiver.seen
    assert headers["Host"] == f"rebinding.invalid:{server.port}" and body == b"{}"


async def test_no_endpoint_means_no_delivery(api, client, clinic):
    grant, _ = await a_release(api)
    await api.withdraw(grant["id"])
    assert await deliveries(_db(client), clinic.id) == []
