"""/readyz tells the truth: 503 naming the failing check when a request would fail,
degraded (not 503) when only the workers are missing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit
import secrets

import pytest
from sqlalchemy import text

from keys.migrate import upgrade as upgrade_keys
from tests.support.databases import fresh_database
from tests.support.workers import no_live_workers
from tests.support.metrics import METRICS_AUTH
from vault.app import create_app
from vault.appkeys import RUNTIME
from vault.jobs.heartbeat import beat, forget
from vault.migrate import upgrade


async def test_ready_and_degraded_without_a_worker(client, clinic):
    app = client.server.app
    await no_live_workers(app[RUNTIME].db)
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body == {
        "status": "degraded",
        "checks": {"database": "ok", "schema": "ok", "keystore": "ok", "storage": "ok", "workers": "no_worker_heartbeat"},
    }
    metrics = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    assert 'vault_ready_check{check="workers"} 0.0' in metrics
    assert 'vault_ready_check{check="keystore"} 1.0' in metrics

    name = "test-worker-" + secrets.token_hex(3)
    await beat(app[RUNTIME].db, name, kinds=3)
    try:
        report = await app[RUNTIME].readiness.report(fresh=True)
        assert report.ready and report.status == "ok", report
    finally:
        await forget(app[RUNTIME].db, name)


async def test_wrong_root_key_is_503(client, clinic, settings, aiohttp_client, tmp_path):
    # Another vault's keyring: the same version names, other keys in them.
    ours = Path(urlsplit(settings.root_key_url).path)
    other = tmp_path / "other-keyring"
    other.mkdir(mode=0o700)
    for version in ours.glob("*.key"):
        fd = os.open(other / version.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_bytes(32))
        os.close(fd)
    wrong = await aiohttp_client(create_app(settings.replace(root_key_url=other.as_uri())))
    resp = await wrong.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "unavailable"
    assert body["checks"]["keystore"] == "wrong_root_key"
    assert body["checks"]["database"] == "ok"


async def test_blob_folder_gone_is_503(settings, aiohttp_client, tmp_path):
    blobs = tmp_path / "blobs"
    client = await aiohttp_client(create_app(settings.replace(storage_url=blobs.as_uri())))
    assert (await client.get("/readyz")).status == 200
    # The mount disappears under a running node (as root, chmod would not stop us).
    blobs.rename(tmp_path / "blobs-gone")
    blobs.write_bytes(b"")
    report = await client.server.app[RUNTIME].readiness.report(fresh=True)
    assert not report.ready
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["checks"]["storage"] == "storage_failed"


@pytest.fixture
def second_db(migrated_db, tmp_path):
    """A fresh database of the run's backend, migrated to head (a sync fixture: making
    and dropping a PostgreSQL database runs its own event loop)."""
    with fresh_database(migrated_db.backend, tmp_path) as db:
        upgrade(db.url)
        asyncio.run(upgrade_keys(db.keystore_url))
        yield db


@pytest.mark.parametrize("stamp, ready", [("0006", False), ("9999_from_a_newer_release", True)])
async def test_schema_older_is_503_and_newer_is_fine(second_db, settings, aiohttp_client, stamp, ready):
    """A node older than the schema keeps serving (rolling upgrade: migrate first);
    a node newer than the schema does not."""
    db = second_db
    client = await aiohttp_client(create_app(settings.replace(database_url=db.url, keystore_url=db.keystore_url)))
    async with client.server.app[RUNTIME].db.transaction() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": stamp})
    resp = await client.get("/readyz")
    body = await resp.json()
    assert (resp.status == 200) is ready, body
    assert body["checks"]["schema"] == ("ok" if ready else "metadata_schema_older")
    await client.close()
