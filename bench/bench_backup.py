"""`vault backup` against a plain file copy of the same data, on SQLite.

    .venv/bin/python bench/bench_backup.py [--patients 200] [--photos 3] [--blob-kib 256] [--rounds 3]

A vault with N patients, each with P photos (three sealed blobs each, as an upload
makes: original and two thumbnails, of --blob-kib KiB of ciphertext), written through
the real services (`SealedBlobs.put_bytes`, patient keys, rows). Then, alternating in
the same run: `take_backup` (one-step online SQLite backup of both databases, blob copy
with SHA-256 of every blob, manifest) and a bare copy (`shutil.copyfile` of the two
database files and every blob file). Medians; the ratio is backup / plain copy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keys.migrate import upgrade as upgrade_keys  # noqa: E402
from vault.actor import Actor  # noqa: E402
from vault.backup.snapshot import take_backup  # noqa: E402
from vault.config import Settings  # noqa: E402
from vault.db import new_id  # noqa: E402
from vault.media.models import Media, MediaBlob  # noqa: E402
from vault.migrate import upgrade  # noqa: E402
from vault.runtime import runtime  # noqa: E402


async def fill(settings: Settings, *, patients: int, photos: int, blob_bytes: int) -> int:
    async with runtime(settings, group_commit=False) as rt:
        tenant = await rt.tenants.create_tenant(f"bench-{uuid.uuid4().hex[:8]}", request_id="bench")
        actor = Actor(tenant_id=tenant.id, token_id="bench", role="practitioner", request_id="bench")
        gate = asyncio.Semaphore(8)
        count = 0

        async def one_patient() -> None:
            nonlocal count
            async with gate:
                patient = await rt.patients.create(actor, external_ref=f"bench-{uuid.uuid4()}")
                now = datetime.now(UTC)
                media, blobs = [], []
                for _ in range(photos):
                    mid = new_id()
                    media.append(dict(id=mid, tenant_id=tenant.id, patient_id=patient.id, kind="photo", status="ready",
                                      phase="after", mime="image/jpeg", created_by="bench", created_at=now, updated_at=now))
                    for rendition in ("original", "thumb256", "thumb1024"):
                        ref = await rt.sealed.put_bytes(tenant.id, patient.id, os.urandom(blob_bytes))
                        blobs.append(dict(id=ref.id, media_id=mid, tenant_id=tenant.id, patient_id=patient.id,
                                          rendition=rendition, mime="image/jpeg", plain_size=ref.plain_size, created_at=now))
                async with rt.db.transaction() as session:
                    await session.execute(Media.__table__.insert(), media)
                    await session.execute(MediaBlob.__table__.insert(), blobs)
                count += len(blobs)

        await asyncio.gather(*(one_patient() for _ in range(patients)))
        await rt.db.checkpoint(wait_ms=5000)
    return count


def plain_copy(settings: Settings, target: Path) -> None:
    target.mkdir()
    for name in ("vault.sqlite3", "keys.sqlite3"):
        shutil.copyfile(settings.data_dir / name, target / name)
    (target / "blobs").mkdir()
    for path in (settings.data_dir / "blobs").rglob("*"):
        if path.is_file():
            shutil.copyfile(path, target / "blobs" / path.name)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--blob-kib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        settings = Settings(data_dir=data, database_url=f"sqlite+aiosqlite:///{data / 'vault.sqlite3'}",
                            keystore_url=f"sqlite+aiosqlite:///{data / 'keys.sqlite3'}",
                            storage_url=(data / "blobs").as_uri(), root_key_url=(work / "keyring").as_uri(),
                            shred_journal=work / "keyring.shred-journal", inprocess_jobs=False)
        await asyncio.to_thread(upgrade, settings.database_url)
        await upgrade_keys(settings.keystore_url)
        blobs = await fill(settings, patients=args.patients, photos=args.photos, blob_bytes=args.blob_kib * 1024)
        size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
        backup_s, copy_s = [], []
        for i in range(args.rounds):
            start = time.perf_counter()
            await asyncio.to_thread(plain_copy, settings, work / f"copy-{i}")
            copy_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = await take_backup(settings, work / f"backup-{i}", vault_version="bench")
            backup_s.append(time.perf_counter() - start)
            assert result.manifest["blobs"]["count"] == blobs
            shutil.rmtree(work / f"copy-{i}")
            shutil.rmtree(work / f"backup-{i}")
        b, c = statistics.median(backup_s), statistics.median(copy_s)
        print(f"vault: {args.patients} patients, {args.patients * args.photos} photos, {blobs} blobs, "
              f"{size / 2**20:.1f} MiB on disk; medians of {args.rounds}")
        print(f"  plain file copy      {c * 1000:8.0f} ms  (baseline)")
        print(f"  vault backup         {b * 1000:8.0f} ms  ratio {b / c:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
