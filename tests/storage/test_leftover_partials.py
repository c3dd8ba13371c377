"""Partial writes are swept by last activity, never while their writer holds a lease:
S3 multipart uploads by their newest part (moto's real S3 API over HTTP), local temp
files by their last write."""

from __future__ import annotations

import asyncio
import os
import uuid

from vault.storage import LocalStore, S3Store, new_key
from vault.storage.s3 import MIN_PART_SIZE


def _uploads(client, bucket: str, prefix: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])]


async def test_s3_multipart_uploads_are_aborted_by_last_activity_not_by_start(moto):
    client = moto.client("s3")
    bucket = f"vault-partials-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto.region})
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    store = S3Store.from_url(f"s3://{bucket}/{prefix}?endpoint_url={moto.url}&region={moto.region}&part_size={MIN_PART_SIZE}")
    try:
        active, idle, leased = new_key(), new_key(), new_key()
        for key in (active, idle, leased):
            upload = client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/{key}")
            if key != idle:  # a part just now: a slow upload still sending
                client.upload_part(Bucket=bucket, Key=f"{prefix}/{key}", UploadId=upload["UploadId"],
                                   PartNumber=1, Body=b"\0" * 1000)
        started = {u["Key"]: u["Initiated"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
        # moto dates every upload's start years back: a sweep by start time would abort all three.
        assert all((started[f"{prefix}/{k}"].year < 2020) for k in (active, idle, leased))

        assert await store.sweep_partials(older_than_s=3600, keep={leased}) == 1  # only the one with no part
        assert sorted(_uploads(client, bucket, prefix)) == sorted([f"{prefix}/{active}", f"{prefix}/{leased}"])

        await asyncio.sleep(1.1)
        # Idle for a second now; a live lease still keeps its upload whatever its age.
        assert await store.sweep_partials(older_than_s=1, keep={leased}) == 1
        assert _uploads(client, bucket, prefix) == [f"{prefix}/{leased}"]
        assert await store.sweep_partials(older_than_s=1) == 1
        assert _uploads(client, bucket, prefix) == []
    finally:
        await store.close()


async def test_local_partials_of_a_leased_key_are_kept_however_old(tmp_path):
    store = LocalStore(tmp_path / "blobs")
    leased, crashed = new_key(), new_key()
    for key in (leased, crashed):
        folder = store.root / key[:2] / key[2:4]
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{key}.0123456789ab.part"
        part.write_bytes(b"\0" * 100)
        old = part.stat().st_mtime - 7200
        os.utime(part, (old, old))
    assert await store.sweep_partials(older_than_s=3600, keep={leased}) == 1
    left = [p.name for p in store.root.rglob("*.part")]
    assert left == [f".{leased}.0123456789ab.part"]
