"""``vault restore --from DIR``: put a backup back, and before anything serves it, destroy
again everything erased since (docs/operations.md, "Restore").

1. **Refusals, before anything is touched**: a manifest that does not check out (format,
   file digests); a backup past its ``unrestorable_after`` or whose epochs the live key
   store records as destroyed, or that the root-key provider no longer opens (one line);
   no shred journal, unless ``accept_resurrection_risk``; a target vault that is not
   empty or that has a live worker, unless ``force``.
2. **Restore**: copied blobs that are missing (each digest checked), then the metadata
   database, then the key store (SQLite online backup API / ``pg_restore``), then the
   migrations of this version.
3. **Reconcile, before the vault serves**: the journal, the shred ledger of the vault
   being replaced and the restored ledger are merged into the ledger; each patient the
   merge says was erased and who is not is erased again through the erasure service
   (tombstone, DEK, a new receipt, the clean-up job) — a legal hold the backup still
   shows was lifted before that erasure, so it goes; each media whose rendition was
   deleted is deleted again; every key in the ledger is re-shredded (``reshred``);
   keys with no row in the restored metadata (made between the two snapshots) are
   shredded; one ``vault.restore`` audit entry per tenant.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from keys.errors import KeysError
from keys.hierarchy import kek_context
from keys.inventory import object_key_owners
from keys.models import object_keys, patient_deks
from keys.models import root_versions as root_versions_table
from vault.backup.journal import JournalEntry, JournalError, journals_for
from vault.backup.snapshot import (
    BLOBS, FORMAT, FORMAT_VERSION, MANIFEST, BackupError, run_pg, sha256_file, sqlite_copy, sqlite_path,
)
from vault.config import Settings
from vault.db import Database, new_id, rowcount, utcnow
from vault.shredding.models import ERASURE, LEFTOVER, OBJECT, OBJECT_DELETE, PATIENT_DEK, ShredRecord

_PAGE = 500
_ledger = cast(Table, ShredRecord.__table__)  # a Table, typed as its base FromClause


@dataclass
class RestoreReport:
    backup_id: str = ""
    journal_entries: int = 0
    merged: int = 0
    reerased: int = 0
    redeleted: int = 0
    holds_lifted: int = 0
    reshredded: int = 0
    orphan_keys: int = 0
    blobs_copied: int = 0
    tenants: list[str] = field(default_factory=list)


def read_manifest(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BackupError(f"{source} holds no readable {MANIFEST}: not a complete backup") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise BackupError(f"{source} is not a backup this version can restore")
    for part in manifest.get("order", []):
        meta = manifest["files"][part]
        path = source / meta["name"]
        if not path.is_file() or sha256_file(path) != meta["sha256"]:
            raise BackupError(f"the {part} copy in {source} is missing or does not match its digest")
    return manifest


async def check_epochs(settings: Settings, manifest: dict[str, Any], *, now: datetime) -> None:
    """Refuse a backup whose epochs are gone: one clear line."""
    horizon = manifest.get("unrestorable_after")
    if horizon and datetime.fromisoformat(horizon.replace("Z", "+00:00")) <= now:
        raise BackupError(f"backup {manifest['backup_id']} cannot be restored: its key epochs were due for destruction "
                          f"from {horizon} (unrestorable_after)")
    needed = [e for e in manifest["epochs"] if e.get("root_version")]
    if not needed:
        return
    from keys import db as keys_db

    try:
        engine = keys_db.create_engine(settings.keystore_url)
        try:
            async with engine.connect() as conn:
                destroyed = {r.version_id for r in await conn.execute(
                    sa.select(root_versions_table.c.version_id).where(
                        root_versions_table.c.version_id.in_([e["root_version"] for e in needed]),
                        root_versions_table.c.destroyed_at.is_not(None)))}
        finally:
            await engine.dispose()
    except sa.exc.DBAPIError:
        destroyed = set()  # no live key store (a new machine): the provider decides below
    from vault.runtime import open_configured_root_key

    root = await open_configured_root_key(settings, create=False)
    try:
        for epoch in needed:
            gone = epoch["root_version"] in destroyed
            if not gone and epoch.get("wrapped_kek"):
                try:
                    await root.unwrap(epoch["root_version"], base64.b64decode(epoch["wrapped_kek"]),
                                      kek_context(epoch["tenant_id"], int(epoch["kek_version"])))
                except KeysError:
                    gone = True
            if gone:
                raise BackupError(f"backup {manifest['backup_id']} cannot be restored: the key epoch of KEK version "
                                  f"{epoch['kek_version']} it needs is destroyed")
    finally:
        await root.close()


async def inspect_target(settings: Settings) -> tuple[int, int, list[dict[str, Any]]]:
    """(tenants, live workers, the shred ledger's rows) of the vault being replaced;
    zeros when there is none (a new machine) or it is not migrated."""
    from vault.jobs.heartbeat import live_workers
    from vault.tenants.models import Tenant

    if settings.is_sqlite and not sqlite_path(settings.database_url).is_file():
        return 0, 0, []
    db = Database(settings.database_url, pool_size=1)
    try:
        async with db.session() as s:
            tenants = int(await s.scalar(select(sa.func.count()).select_from(Tenant)) or 0)
            ledger = [{c.name: getattr(r, c.name) for c in ShredRecord.__table__.columns}
                      for r in (await s.execute(select(ShredRecord))).scalars()]
        workers = await live_workers(db)
        return tenants, workers, ledger
    except sa.exc.DBAPIError:
        return 0, 0, []
    finally:
        await db.close()


async def copy_blobs(settings: Settings, source: Path, manifest: dict[str, Any]) -> int:
    blobs = manifest["blobs"]
    if blobs["mode"] != "copied":
        return 0  # listed only: the bucket's versioning/replication restores them
    from vault.storage import open_store

    store = open_store(settings.storage_url)
    copied = 0
    try:
        for item in blobs["items"]:
            if await store.exists(item["key"]):
                continue
            path = source / BLOBS / item["key"]
            if not path.is_file() or sha256_file(path) != item["sha256"]:
                raise BackupError(f"blob {item['key']} in {source} is missing or does not match its digest")

            async def chunks(p: Path = path):
                with p.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        yield chunk

            await store.put(item["key"], chunks(), size_hint=item["size"])
            copied += 1
    finally:
        await store.close()
    return copied


def restore_databases(settings: Settings, source: Path, manifest: dict[str, Any]) -> None:
    meta, keys = (source / manifest["files"][part]["name"] for part in ("metadata", "keystore"))
    if manifest["backend"] != ("sqlite" if settings.is_sqlite else "postgresql"):
        raise BackupError(f"this backup is of a {manifest['backend']} vault; restore it into the same kind of database")
    if settings.is_sqlite:
        for copy, url in ((meta, settings.database_url), (keys, settings.keystore_url)):
            live = sqlite_path(url)
            live.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not live.exists():
                os.close(os.open(live, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            sqlite_copy(copy, live)
            with sqlite3.connect(live) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return
    args = ("--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error")
    run_pg("pg_restore", *args, str(meta), url=settings.database_url)
    run_pg("pg_restore", *args, str(keys), url=settings.keystore_url)


def _entry_rows(entries: list[JournalEntry], ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [dict(key_id=e.key_id, kind=e.kind, tenant_id=e.tenant_id, patient_id=e.patient_id, object_id=e.object_id,
                 destroyed_at=e.at, cause=e.cause) for e in entries]
    rows += [{k: r[k] for k in ("key_id", "kind", "tenant_id", "patient_id", "object_id", "destroyed_at", "cause")}
             for r in ledger]
    return rows


async def reconcile(rt, rows: list[dict[str, Any]], *, report: RestoreReport, request_id: str) -> None:
    from vault.actor import Actor
    from vault.audit.service import AuditEvent
    from vault.errors import VaultError
    from vault.lifecycle.models import LegalHold
    from vault.media.models import DELETED, Media, MediaBlob
    from vault.patients.models import ERASED, Patient
    from vault.tenants.models import Tenant

    db: Database = rt.db
    async with db.session() as s:
        tenants = set((await s.execute(select(Tenant.id))).scalars())
    # 1. the merged ledger (rows of unknown tenants: their keys are re-shredded by id)
    unknown = [r["key_id"] for r in rows if r["tenant_id"] not in tenants and r["key_id"]]
    known = [r for r in rows if r["tenant_id"] in tenants]
    async with db.transaction() as s:
        insert = pg_insert if db.dialect == "postgresql" else sqlite_insert
        for r in known:
            if r["key_id"] is None:
                present = await s.scalar(select(ShredRecord.id).where(
                    ShredRecord.tenant_id == r["tenant_id"], ShredRecord.patient_id == r["patient_id"],
                    ShredRecord.kind == r["kind"], ShredRecord.object_id.is_(None) if r["object_id"] is None
                    else ShredRecord.object_id == r["object_id"]).limit(1))
                if present is not None:
                    continue
            result = await s.execute(insert(_ledger).on_conflict_do_nothing(index_elements=["key_id"]),
                                     {**r, "id": new_id()})
            report.merged += max(rowcount(result), 0)
    if unknown:
        report.reshredded += await rt.keys.reshred(unknown)
    # 2. patients erased after the backup: erased again, through the erasure service
    erased = sorted({(r["tenant_id"], r["patient_id"]) for r in known if r["kind"] == PATIENT_DEK and r["cause"] == ERASURE})
    for tenant_id, patient_id in erased:
        async with db.session() as s:
            status = await s.scalar(select(Patient.status).where(Patient.id == patient_id, Patient.tenant_id == tenant_id))
        if status is None or status == ERASED:
            continue
        async with db.transaction() as s:
            hold = await s.get(LegalHold, patient_id)
            if hold is not None and hold.lifted_at is None:
                hold.lifted_at = utcnow()  # lifted before the erasure the journal records
                report.holds_lifted += 1
        actor = Actor.cli(tenant_id, request_id)
        await rt.lifecycle.erasure.erase(actor, patient_id, reason="re-erased after a restore (shred journal)")
        report.reerased += 1
    # 3. media deleted after the backup: deleted again
    deleted_blobs = sorted({r["object_id"] for r in known
                            if r["kind"] == OBJECT and r["cause"] == OBJECT_DELETE and r["object_id"]})
    for start in range(0, len(deleted_blobs), _PAGE):
        async with db.session() as s:
            media = (await s.execute(
                select(Media.id, Media.tenant_id).join(MediaBlob, MediaBlob.media_id == Media.id)
                .where(MediaBlob.id.in_(deleted_blobs[start:start + _PAGE]), Media.status != DELETED).distinct())).all()
        for media_id, tenant_id in media:
            try:
                await rt.lifecycle.erasure.delete_media(Actor.cli(tenant_id, request_id), media_id)
                report.redeleted += 1
            except VaultError:
                continue  # its patient is erased (the purge removes it) or held
    # 4. every key in the ledger, destroyed again; markers by ids
    await rt.ledger.reconcile()
    report.reshredded += sum((await rt.ledger.reshred()).values())
    # 5. keys with no row in the restored metadata (made between the two snapshots)
    report.orphan_keys += await _sweep_orphans(rt, tenants)
    # 6. the restore itself, in each tenant's chain
    report.tenants = sorted(tenants)
    for tenant_id in report.tenants:
        await rt.audit.record(AuditEvent.of(
            Actor.cli(tenant_id, request_id), "vault.restore", backup_id=report.backup_id,
            reerased=str(report.reerased), redeleted=str(report.redeleted), reshredded=str(report.reshredded)))
    await rt.keys.finish_shreds()
    await db.checkpoint()


async def _sweep_orphans(rt, tenants: set[str]) -> int:
    from vault.leftovers.references import referenced
    from vault.patients.models import Patient

    swept = 0
    engine = rt.keys._reader
    async with engine.connect() as conn:
        deks = [(r.tenant_id, r.patient_id) for r in await conn.execute(
            sa.select(patient_deks.c.tenant_id, patient_deks.c.patient_id))]
    for start in range(0, len(deks), _PAGE):
        page = deks[start:start + _PAGE]
        async with rt.db.session() as s:
            present = set((await s.execute(select(Patient.id).where(Patient.id.in_([p for _, p in page])))).scalars())
        for tenant_id, patient_id in page:
            if patient_id in present:
                continue
            if tenant_id in tenants:
                swept += len(await rt.ledger.shred_patient(tenant_id, patient_id, cause=LEFTOVER))
            else:
                swept += len(await rt.keys.destroy_patient(tenant_id, patient_id))
    after = ""
    while True:
        async with engine.connect() as conn:
            ids = list((await conn.execute(sa.select(object_keys.c.object_id).where(object_keys.c.object_id > after)
                                           .order_by(object_keys.c.object_id).limit(_PAGE))).scalars())
        if not ids:
            return swept
        after = ids[-1]
        async with rt.db.session() as s:
            kept = await referenced(s, ids)
        owners = await object_key_owners(rt.keys, [i for i in ids if i not in kept])
        for object_id, owner in owners.items():
            if owner.tenant_id in tenants:
                key_id = await rt.ledger.shred_object(owner.tenant_id, owner.patient_id, object_id, cause=LEFTOVER)
            else:
                key_id = await rt.keys.destroy_object(owner.tenant_id, owner.patient_id, object_id)
            swept += key_id is not None


async def restore(settings: Settings, source: Path, *, force: bool, accept_resurrection_risk: bool,
                  request_id: str, migrate) -> RestoreReport:
    manifest = read_manifest(source)
    report = RestoreReport(backup_id=manifest["backup_id"])
    await check_epochs(settings, manifest, now=utcnow())
    entries: list[JournalEntry] = []
    journals = journals_for(settings)
    folder = journals.file if journals is not None and journals.file is not None and journals.file.directory.is_dir() else None
    if journals is None or (folder is None and journals.store is None):
        if journals is not None:
            await journals.close()
        if not accept_resurrection_risk:
            where = (f" ({settings.shred_journal} is missing)" if settings.shred_journal is not None
                     else " (VAULT_SHRED_JOURNAL is not set)")
            raise BackupError("no shred journal" + where + ": patients erased after this backup would come back; "
                              "refusing without --accept-resurrection-risk")
    else:
        try:
            if folder is not None:
                entries += folder.read()
            if journals.store is not None:
                entries += await journals.store.read()
        except JournalError as exc:
            raise BackupError(f"{exc}; refusing to restore") from None
        finally:
            await journals.close()
    report.journal_entries = len(entries)
    tenants, workers, live_ledger = await inspect_target(settings)
    if workers and not force:
        raise BackupError(f"{workers} worker(s) of this vault are running: stop every node and worker first "
                          "(or --force)")
    if tenants and not force:
        raise BackupError(f"the target vault is not empty ({tenants} tenants): --force replaces it with the backup")
    report.blobs_copied = await copy_blobs(settings, source, manifest)
    restore_databases(settings, source, manifest)
    await asyncio.to_thread(migrate, settings)  # it runs its own event loops
    from vault.runtime import runtime

    async with runtime(settings, group_commit=False, create_root_key=False) as rt:
        await reconcile(rt, _entry_rows(entries, live_ledger), report=report, request_id=request_id)
    return report


def describe(manifest: dict[str, Any]) -> str:
    blobs = manifest["blobs"]
    return (f"backup {manifest['backup_id']}: {manifest['backend']}, {len(manifest['epochs'])} epochs, "
            f"{blobs['count']} blobs ({blobs['mode']}), unrestorable after {manifest['unrestorable_after'] or 'never'}")
