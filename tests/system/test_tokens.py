"""Tokens as the design has them: a label naming the system that holds it (and named by
the audit log), an optional expiry, revocation by a tenant's admin over HTTP, and
revocation heard by every node (vault/db/notify.py): two token services on one
PostgreSQL database stand for two nodes here; tests/system/test_multinode.py does the
same with real processes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from vault.errors import NotFound, Unauthorized, ValidationFailed
from vault.tenants.models import ApiToken
from vault.tenants.service import parse_expiry


async def _spare(client, clinic, role="records", **options):
    from vault.appkeys import RUNTIME

    tenants = client.server.app[RUNTIME].tenants
    return await tenants.create_token(clinic.slug, role, label="front desk scanner", request_id="t", **options)


async def test_an_admin_revokes_a_token_of_its_own_tenant_only(client, clinic, other_clinic):
    spare = await _spare(client, clinic)
    theirs = await _spare(client, other_clinic)
    bearer = {"Authorization": f"Bearer {spare.token}"}
    assert (await client.get("/v1/patients", headers=bearer)).status == 200

    resp = await client.delete(f"/v1/tokens/{theirs.id}", headers=clinic.auth("admin"))
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await client.delete("/v1/tokens/" + "0" * 32, headers=clinic.auth("admin"))
    assert resp.status == 404
    assert (await client.get("/v1/patients", headers={"Authorization": f"Bearer {theirs.token}"})).status == 200

    resp = await client.delete(f"/v1/tokens/{spare.id}", headers=clinic.auth("admin"))
    assert resp.status == 204 and await resp.read() == b""
    resp = await client.get("/v1/patients", headers=bearer)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    assert (await client.delete(f"/v1/tokens/{spare.id}", headers=clinic.auth("admin"))).status == 204  # again: no-op

    # Audited, and the audit log names the admin token by its label.
    resp = await client.get("/v1/audit", params={"action": "token.revoke"}, headers=clinic.auth("dpo"))
    entries = (await resp.json())["items"]
    assert [e["targets"]["token_id"] for e in entries] == [spare.id, spare.id]
    assert {e["actor_label"] for e in entries} == {"test admin"} and {e["role"] for e in entries} == {"admin"}
    # other tenant's audit has no trace of the attempt on its token
    resp = await client.get("/v1/audit", params={"action": "token.revoke"}, headers=other_clinic.auth("dpo"))
    assert (await resp.json())["items"] == []


async def test_concurrent_first_uses_share_one_lookup_and_a_revocation_is_not_joined(client, clinic):
    """Requests holding a token nobody has resolved yet (or whose cache entry just
    expired) share one database lookup and get the same principal; a request that comes
    after a revocation was heard never joins a lookup started before it."""
    from vault.appkeys import RUNTIME

    tenants = client.server.app[RUNTIME].tenants
    spare = await _spare(client, clinic)
    principals = await asyncio.gather(*(tenants.authenticate(spare.token) for _ in range(20)))
    assert {(p.tenant_id, p.token_id, p.role) for p in principals} == {(clinic.id, spare.id, "records")}
    assert tenants._lookups == {}  # nothing left in flight

    tenants._cache.clear()  # as if the entry had expired
    first = asyncio.ensure_future(tenants.authenticate(spare.token))  # a lookup in flight (on PostgreSQL)
    await asyncio.sleep(0)
    await tenants.revoke_token(spare.id, request_id="t")
    with pytest.raises(Unauthorized):
        await tenants.authenticate(spare.token)
    await asyncio.gather(first, return_exceptions=True)  # read before or after the revocation: either answer
    with pytest.raises(Unauthorized):
        await tenants.authenticate(spare.token)
    assert tenants._lookups == {}


async def test_expired_tokens_are_refused_like_revoked_ones(client, clinic):
    from vault.appkeys import RUNTIME

    rt = client.server.app[RUNTIME]
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    short = await _spare(client, clinic, expires_at=soon)
    bearer = {"Authorization": f"Bearer {short.token}"}
    assert (await client.get("/v1/patients", headers=bearer)).status == 200  # now cached on this node
    while datetime.now(UTC) <= soon:
        await asyncio.sleep(0.1)
    resp = await client.get("/v1/patients", headers=bearer)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"

    # A token past its date in the database (never seen by this node) is refused too.
    other = await _spare(client, clinic, expires_at=datetime.now(UTC) + timedelta(days=1))
    async with rt.db.transaction() as session:
        await session.execute(update(ApiToken).where(ApiToken.id == other.id)
                              .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert (await client.get("/v1/patients", headers={"Authorization": f"Bearer {other.token}"})).status == 401
    states = {t.id: t.state(datetime.now(UTC)) for t in await rt.tenants.tokens(clinic.slug)}
    assert states[short.id] == states[other.id] == "expired"

    with pytest.raises(ValidationFailed):
        await _spare(client, clinic, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(ValidationFailed):
        await rt.tenants.create_token(clinic.slug, "records", label="  ", request_id="t")


def test_expiry_forms():
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert parse_expiry("30d", now=now) == now + timedelta(days=30)
    assert parse_expiry("12h", now=now) == now + timedelta(hours=12)
    assert parse_expiry("90m", now=now) == now + timedelta(minutes=90)
    assert parse_expiry("2027-01-31", now=now) == datetime(2027, 1, 31, tzinfo=UTC)
    assert parse_expiry("2027-01-31T18:00:00+01:00", now=now) == datetime(2027, 1, 31, 17, tzinfo=UTC)
    for bad in ("", "soon", "-3d", "3w", "2026-12-01", "0h"):
        with pytest.raises(ValidationFailed):
            parse_expiry(bad, now=now)


# -- two nodes on one database -------------------------------------------------------------


@pytest.fixture
async def two_nodes(client, settings):
    """A second token service with its own notifier, as on another node."""
    from vault.appkeys import RUNTIME
    from vault.db import Database
    from vault.db.notify import open_notifier
    from vault.tenants.service import TenantService

    rt = client.server.app[RUNTIME]
    db = Database(settings.database_url, pool_size=2)
    notifier = open_notifier(db)
    other = TenantService(db, rt.audit, rt.keys, notifier=notifier)
    await notifier.start()
    for service in (rt.tenants, other):  # both listening before the test begins
        deadline = time.monotonic() + 10
        while service.notifier.cache_seconds(30) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    yield rt.tenants, other, notifier
    await notifier.close()
    await db.close()


async def test_a_revocation_on_one_node_is_heard_by_the_other(two_nodes, clinic, migrated_db):
    here, there, _ = two_nodes
    issued = await here.create_token(clinic.slug, "records", label="ward tablet", request_id="t")
    await here.authenticate(issued.token)
    await there.authenticate(issued.token)  # cached there
    await here.revoke_token(issued.id, request_id="t")
    with pytest.raises(Unauthorized):
        await here.authenticate(issued.token)
    # The other node: PostgreSQL delivers the NOTIFY within milliseconds; SQLite has one
    # node per database and bounds the cache to LOCAL_BOUND instead.
    revoked_at = time.monotonic()
    while True:
        try:
            await there.authenticate(issued.token)
        except Unauthorized:
            break
        assert time.monotonic() - revoked_at < 1.0 + 0.5, "still accepted on the other node"
        await asyncio.sleep(0.02)
    print(f"\n{migrated_db.backend}: refused on the other node {1000 * (time.monotonic() - revoked_at):.1f} ms "
          "after the revocation returned")
    with pytest.raises(NotFound):
        await here.revoke_token("f" * 32, request_id="t")


async def test_caches_are_off_while_the_listener_is_down(two_nodes, migrated_db, clinic):
    from vault.db.notify import LOCAL_BOUND

    _, there, notifier = two_nodes
    if migrated_db.backend == "sqlite":  # one node per database: no listener, a short bound instead
        assert not notifier.listening and notifier.cache_seconds(30.0) == LOCAL_BOUND
        return
    assert notifier.listening and notifier.cache_seconds(30.0) == 30.0
    await notifier.close()  # the connection is gone: nothing announced would be heard
    assert not notifier.listening and notifier.cache_seconds(30.0) == 0.0
    await notifier.start()
    deadline = time.monotonic() + 10
    while not notifier.listening:
        assert time.monotonic() < deadline, "the listener did not come back"
        await asyncio.sleep(0.05)
    assert notifier.connects == 2

    # The server ends the listener's connection: caches go off, it reconnects by itself,
    # and a revocation after that is heard again.
    from sqlalchemy import text

    pid = notifier._conn.get_server_pid()
    async with there.db.transaction() as session:
        await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 15
    while notifier.connects < 3 or not notifier.listening:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)
    heard = notifier.delivered
    issued = await there.create_token(clinic.slug, "records", label="after reconnect", request_id="t")
    await there.authenticate(issued.token)
    await two_nodes[0].revoke_token(issued.id, request_id="t")
    while notifier.delivered == heard:
        assert time.monotonic() < deadline, "a revocation after the reconnect was not heard"
        await asyncio.sleep(0.02)
    with pytest.raises(Unauthorized):
        await there.authenticate(issued.token)
