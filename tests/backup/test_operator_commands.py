"""`vault tenant list`, `vault jobs retry|discard` and `vault doctor` on PostgreSQL + S3 +
KMS, through the real CLI entry (a subprocess), each on a vault of its own."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta

import pytest

from tests.backup.support import own_vault, start
from tests.shredding.support import fetch_all, new_patient, upload_photo
from tests.support.databases import backends
from vault.appkeys import RUNTIME
from vault.jobs.queue import claim, enqueue, fail

KIND = "test.ops-dead"


async def _dead_job(db, tenant_id: str) -> str:
    async with db.transaction() as session:
        job_id = await enqueue(session, KIND, {"tenant_id": tenant_id}, max_attempts=1)
    (claimed,) = await claim(db, kinds=[KIND], limit=1, lease=timedelta(seconds=30), worker="test")
    assert await fail(db, claimed.id, claimed.fence, error="RuntimeError: boom", retry_at=None)
    return job_id


async def _job_state(db, job_id: str):
    from vault.jobs.models import Job

    async with db.session() as session:
        job = await session.get(Job, job_id)
    return None if job is None else (job.state, job.attempts)


@pytest.mark.parametrize("backend", backends())
async def test_tenant_list_and_dead_jobs(backend, tmp_path, aiohttp_client):
    async with own_vault(backend, tmp_path) as vault:
        client = await start(vault, aiohttp_client)
        kept, erased = [await new_patient(client, vault) for _ in range(2)]
        resp = await client.post(f"/v1/patients/{erased}/erasure", json={"reason": "Art. 17"}, headers=vault.auth("dpo"))
        assert resp.status == 200
        db = client.server.app[RUNTIME].db
        dead = await _dead_job(db, vault.tenant_id)

        listed = vault.cli("tenant", "list")
        assert listed.returncode == 0, listed.stderr
        (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith(vault.slug + " ")]
        assert row[-1] == "1"  # live patients: the erased one does not count
        assert kept not in listed.stdout and "MRN" not in listed.stdout

        retried = vault.cli("jobs", "retry", dead, "--reason", "fixed the bucket policy")
        assert retried.returncode == 0, retried.stderr
        assert "RuntimeError: boom" in retried.stdout and "fixed the bucket policy" in retried.stdout
        assert await _job_state(db, dead) == ("queued", 0)
        again = vault.cli("jobs", "retry", dead)
        assert again.returncode == 1 and "not dead" in again.stderr and "queued" in again.stderr

        (claimed,) = await claim(db, kinds=[KIND], limit=1, lease=timedelta(seconds=30), worker="test")
        assert await fail(db, claimed.id, claimed.fence, error="RuntimeError: boom again", retry_at=None)
        discarded = vault.cli("jobs", "discard", dead)
        assert discarded.returncode == 0 and "discarded" in discarded.stdout
        assert await _job_state(db, dead) is None
        unknown = vault.cli("jobs", "discard", secrets.token_hex(16))
        assert unknown.returncode == 1 and "no job" in unknown.stderr

        entries = await client.server.app[RUNTIME].audit.entries(vault.tenant_id, limit=1000)
        assert [(e.action, e.actor) for e in entries if e.action.startswith("jobs.")] == [
            ("jobs.retry", "cli"), ("jobs.discard", "cli")]
        await client.close()


@pytest.mark.skipif("postgresql" not in backends(), reason="PostgreSQL + S3 + KMS: VAULT_TEST_DATABASE_URL unset")
async def test_doctor_on_postgresql_s3_and_kms(tmp_path, moto, aiohttp_client):
    bucket = "doctor-" + secrets.token_hex(4)
    moto.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto.region})
    storage = f"s3://{bucket}/blobs/?endpoint_url={moto.url}&region={moto.region}"
    prefix = "alias/doctor-" + secrets.token_hex(4)
    root = f"aws-kms://{prefix}?region={moto.region}&endpoint_url={moto.url}"
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    async with own_vault("postgresql", tmp_path, storage_url=storage, root_key_url=root, extra_env=aws) as vault:
        client = await start(vault, aiohttp_client)  # makes the tenant and its KMS epoch
        patient = await new_patient(client, vault)
        photo = await upload_photo(client, vault, patient)
        before = await fetch_all(client, vault, photo)
        await client.close()

        def lines(result) -> dict[str, str]:
            return {ln.split()[1]: ln.split()[0] for ln in result.stdout.splitlines() if ln.split()[:1] in (["ok"], ["FAIL"])}

        healthy = vault.cli("doctor")
        checks = lines(healthy)
        assert {name for name, mark in checks.items() if mark == "ok"} >= {"database", "schema", "keystore", "storage"}
        assert healthy.returncode == 1 and checks["workers"] == "FAIL"  # no worker runs here

        closed = "http://127.0.0.1:9"
        no_s3 = vault.cli("doctor", env={"VAULT_STORAGE_URL": f"s3://{bucket}/blobs/?endpoint_url={closed}&region={moto.region}"})
        assert no_s3.returncode == 1 and lines(no_s3)["storage"] == "FAIL" and lines(no_s3)["keystore"] == "ok"
        no_kms = vault.cli("doctor", env={"VAULT_ROOT_KEY_URL": f"aws-kms://{prefix}?region={moto.region}&endpoint_url={closed}"})
        assert no_kms.returncode == 1 and lines(no_kms)["keystore"] == "FAIL", no_kms.stdout
        assert "root_key_unreachable" in no_kms.stdout
        no_pg = vault.cli("doctor", env={"VAULT_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:9/none"})
        assert no_pg.returncode == 1 and lines(no_pg)["database"] == "FAIL"

        # backup and restore on the same deployment: blobs listed (the bucket keeps them), epochs on KMS
        backup = tmp_path / "backup"
        made = vault.cli("backup", "--to", str(backup))
        assert made.returncode == 0, made.stderr
        manifest = json.loads((backup / "manifest.json").read_text())
        s3 = moto.client("s3")
        objects = {o["Key"].rsplit("/", 1)[-1]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        assert manifest["blobs"]["mode"] == "listed" and not (backup / "blobs").exists()
        assert {i["key"]: i["size"] for i in manifest["blobs"]["items"]} == objects
        for item in manifest["blobs"]["items"]:
            body = s3.get_object(Bucket=bucket, Key=f"blobs/{item['key']}")["Body"].read()
            assert hashlib.sha256(body).hexdigest() == item["sha256"]
        assert manifest["root_key_provider"] == "aws-kms" and manifest["epochs"]
        restored = vault.cli("restore", "--from", str(backup), "--force")
        assert restored.returncode == 0, restored.stderr
        client = await start(vault, aiohttp_client)
        assert await fetch_all(client, vault, photo) == before
        await client.close()
