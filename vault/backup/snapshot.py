"""``vault backup --to DIR``: a consistent snapshot of the metadata database, then of the
key store, then a manifest of the blobs — never the root keyring.

- SQLite: the online backup API in ONE step (``Connection.backup(pages=-1)``): a
  stepwise backup restarts whenever another connection writes, so a busy vault would
  never finish. One step holds a read snapshot for the copy's duration, which erasure
  no longer waits for (the shred's checkpoint is bounded, docs/keys.md).
- PostgreSQL: ``pg_dump --format=custom`` of the metadata (every schema but the key
  store's) and of the key store's schema, each a consistent snapshot of itself.
- Order: metadata first, then the key store. A key created between the two snapshots
  has no row in the restored metadata (restore sweeps it); a row never lacks its key.
- Blobs are ciphertext already. A ``file:`` blob store is copied into ``DIR/blobs``;
  an S3 bucket is only listed (its own versioning/replication is its backup). Either
  way the manifest lists every blob with its size and the SHA-256 of its ciphertext.
- The manifest records the epochs (root-key versions) the key store needs and
  ``unrestorable_after``: the earliest date one of them may be destroyed. After it the
  backup cannot be restored, so keep backups no longer than that.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from keys import db as keys_db
from keys.models import SCHEMA as KEYSTORE_SCHEMA
from keys.models import patient_deks, root_versions, tenant_keks
from vault.config import Settings
from vault.db import new_id, utcnow
from vault.errors import BlobNotFound, VaultError
from vault.storage import open_store

FORMAT = "clinical-photo-vault-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BLOBS = "blobs"
FILES = {"sqlite": ("metadata.sqlite3", "keystore.sqlite3"), "postgresql": ("metadata.dump", "keystore.dump")}


class BackupError(VaultError):
    """A backup or restore that cannot proceed; the message is one line for the operator."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, Any]


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sqlite_path(url: str) -> Path:
    return Path(make_url(url).database or "")


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for pg_dump/pg_restore, with the password moved to the environment
    (never on a command line other users can read)."""
    parsed = make_url(url).set(drivername="postgresql")
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return parsed.set(password=None).render_as_string(hide_password=False), env


def run_pg(tool: str, *args: str, url: str) -> None:
    if shutil.which(tool) is None:
        raise BackupError(f"{tool} is not installed (Debian: postgresql-client)")
    target, env = libpq(url)
    done = subprocess.run([tool, *args, "--dbname", target], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # pg_* messages name tables and roles, not row values; the first line is enough.
        first = (done.stderr.strip().splitlines() or ["failed"])[0]
        raise BackupError(f"{tool} failed: {first}")


def sqlite_copy(source: Path, target: Path) -> None:
    """One-step online backup (``pages=-1``): consistent, and not restarted by writers."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
    finally:
        src.close()


async def take_backup(settings: Settings, target: Path, *, vault_version: str) -> BackupResult:
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty: back up into a new folder")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    backend = "sqlite" if settings.is_sqlite else "postgresql"
    meta_name, keys_name = FILES[backend]
    await _ensure_signing_key(settings)
    started = utcnow()
    # 1. metadata, 2. key store: a key never lacks from the copy what a row of it needs.
    if backend == "sqlite":
        sqlite_copy(sqlite_path(settings.database_url), target / meta_name)
    else:
        run_pg("pg_dump", "--format=custom", "--no-owner", f"--exclude-schema={KEYSTORE_SCHEMA}",
               "--file", str(target / meta_name), url=settings.database_url)
    # The epochs the copy needs, read before and after its snapshot: a rotation in
    # between (the hourly job) must not hide the version the copy's DEKs are under.
    before = await live_epochs(settings)
    if backend == "sqlite":
        sqlite_copy(sqlite_path(settings.keystore_url), target / keys_name)
    else:
        run_pg("pg_dump", "--format=custom", "--no-owner", f"--schema={KEYSTORE_SCHEMA}",
               "--file", str(target / keys_name), url=settings.keystore_url)
    epochs = _union(before, await live_epochs(settings))
    blobs = await blob_manifest(settings, target)
    _ensure_journal(settings)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backup_id": new_id(),
        "vault_version": vault_version,
        "backend": backend,
        "started_at": iso(started),
        "finished_at": iso(utcnow()),
        "order": ["metadata", "keystore"],
        "files": {
            "metadata": {"name": meta_name, "size": (target / meta_name).stat().st_size,
                         "sha256": sha256_file(target / meta_name)},
            "keystore": {"name": keys_name, "size": (target / keys_name).stat().st_size,
                         "sha256": sha256_file(target / keys_name)},
        },
        "root_key_provider": urlsplit(settings.root_key_url).scheme,
        "root_keyring_included": False,
        "backup_window_days": settings.backup_window_days,
        "kek_rotation_days": settings.kek_rotation_days,
        "epochs": epochs,
        "unrestorable_after": iso(unrestorable_after(epochs, settings.kek_rotation_days)),
        "blobs": blobs,
    }
    path = target / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    return BackupResult(target, manifest)


async def _ensure_signing_key(settings: Settings) -> None:
    """The service signing key is made on first use; a backup taken before the first
    receipt must still hold it, or receipts signed later stop verifying after a restore."""
    from keys.store import KeyStore
    from vault.runtime import open_configured_root_key

    root = await open_configured_root_key(settings, create=False)
    try:
        keys = await KeyStore.open(settings.keystore_url, root, backup_window_days=settings.backup_window_days)
        try:
            await keys.signing_key()
        finally:
            await keys.close()
    finally:
        await root.close()


def _ensure_journal(settings: Settings) -> None:
    # A vault that never shredded has no journal file yet; its directory existing is
    # what tells a later restore the journal was kept (and not lost with a machine).
    if settings.shred_journal is not None:
        settings.shred_journal.mkdir(mode=0o700, parents=True, exist_ok=True)


async def live_epochs(settings: Settings) -> list[dict[str, Any]]:
    """The root-key versions the copied key store needs: each tenant's current KEK
    version and every version still wrapping a DEK (with the wrapped KEK, ciphertext
    under that version, so a restore can prove the provider still opens it)."""
    engine = keys_db.create_engine(settings.keystore_url)
    try:
        async with engine.connect() as conn:
            used = {(r.tenant_id, r.kek_version) for r in await conn.execute(
                sa.select(patient_deks.c.tenant_id, patient_deks.c.kek_version).distinct())}
            rows = (await conn.execute(
                sa.select(tenant_keks.c.tenant_id, tenant_keks.c.version, tenant_keks.c.state, tenant_keks.c.wrapped,
                          tenant_keks.c.root_version, root_versions.c.destroy_after)
                .join(root_versions, root_versions.c.version_id == tenant_keks.c.root_version, isouter=True)
                .where(tenant_keks.c.state != "destroyed")
                .order_by(tenant_keks.c.tenant_id, tenant_keks.c.version))).all()
    finally:
        await engine.dispose()
    epochs = []
    for r in rows:
        if r.state != "active" and (r.tenant_id, r.version) not in used:
            continue  # retired and wrapping nothing: the copy loses nothing when it goes
        destroy_after = r.destroy_after
        if destroy_after is not None and destroy_after.tzinfo is None:
            from datetime import UTC

            destroy_after = destroy_after.replace(tzinfo=UTC)
        epochs.append({"tenant_id": r.tenant_id, "kek_version": r.version, "root_version": r.root_version,
                       "state": r.state, "destroy_after": iso(destroy_after),
                       "wrapped_kek": base64.b64encode(r.wrapped).decode() if r.wrapped else None})
    return epochs


def _union(*reads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for read in reads:
        for epoch in read:
            known = merged.get((epoch["tenant_id"], epoch["kek_version"]))
            if known is None or (known["wrapped_kek"] is None and epoch["wrapped_kek"] is not None):
                merged[(epoch["tenant_id"], epoch["kek_version"])] = epoch
    return [merged[k] for k in sorted(merged)]


def unrestorable_after(epochs: list[dict[str, Any]], rotation_days: int) -> datetime | None:
    """The periodic job may destroy an epoch up to one rotation period before its
    ``destroy_after``: the earliest such moment over the needed epochs."""
    dates = [datetime.fromisoformat(e["destroy_after"].replace("Z", "+00:00")) for e in epochs if e["destroy_after"]]
    return min(dates) - timedelta(days=rotation_days) if dates else None


async def blob_manifest(settings: Settings, target: Path, *, concurrency: int = 8) -> dict[str, Any]:
    scheme = urlsplit(settings.storage_url).scheme
    copy = scheme == "file"
    folder = target / BLOBS
    if copy:
        folder.mkdir(mode=0o700)
    store = open_store(settings.storage_url)
    try:
        keys = [key async for key in store.keys()]
        gate = asyncio.Semaphore(concurrency)  # overlaps reads, hashing and each copy's fsync

        async def one(key: str) -> dict[str, Any] | None:
            async with gate:
                return await _blob(store, key, folder if copy else None)

        items = [item for item in await asyncio.gather(*(one(key) for key in keys)) if item is not None]
    finally:
        await store.close()
    return {"mode": "copied" if copy else "listed", "storage": scheme, "count": len(items),
            "bytes": sum(item["size"] for item in items), "items": items}


async def _blob(store, key: str, folder: Path | None) -> dict[str, Any] | None:
    """Size and SHA-256 of one blob's ciphertext, copied into ``folder`` when given;
    None when it was deleted meanwhile (purged or swept after the metadata snapshot)."""
    digest, size = hashlib.sha256(), 0
    out = await asyncio.to_thread(os.open, folder / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) if folder else None
    try:
        try:
            async with await store.get(key) as blob:
                async for chunk in blob:
                    digest.update(chunk)
                    size += len(chunk)
                    if out is not None:
                        await asyncio.to_thread(os.write, out, chunk)
        except BlobNotFound:
            if folder is not None:
                (folder / key).unlink()
            return None
        if out is not None:
            await asyncio.to_thread(os.fsync, out)
    finally:
        if out is not None:
            os.close(out)
    return {"key": key, "size": size, "sha256": digest.hexdigest()}
