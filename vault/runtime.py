"""Open every client and service the vault needs, in dependency order, and close
them in reverse. Used by the app factory (as a cleanup context), the CLI and
workers, so all three run on the same wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from keys.providers import open_root_key
from keys.store import KeyStore
from vault.audit.service import AuditLog
from vault.config import Settings
from vault.db import Database
from vault.media.processing import PhotoPipeline
from vault.media.service import MediaService
from vault.patients.service import PatientService
from vault.sealed import SealedBlobs
from vault.storage import open_store
from vault.tenants.service import TenantService
from vault.treatments.service import TreatmentService


@dataclass
class Runtime:
    settings: Settings
    db: Database
    audit: AuditLog
    keys: KeyStore
    store: object
    sealed: SealedBlobs
    tenants: TenantService
    patients: PatientService
    treatments: TreatmentService
    media: MediaService


@asynccontextmanager
async def runtime(settings: Settings, *, group_commit: bool = True) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        db = Database(settings.database_url)
        stack.push_async_callback(db.close)
        audit = AuditLog(db)
        if group_commit:
            await audit.start()
            stack.push_async_callback(audit.stop)
        root = open_root_key(settings.root_key_url, production=settings.production)
        keys = await KeyStore.open(settings.keystore_url, root, cache_ttl=settings.key_cache_seconds)
        stack.push_async_callback(keys.close)
        store = open_store(settings.storage_url)
        stack.push_async_callback(store.close)
        pipeline = PhotoPipeline(
            max_pixels=settings.max_pixels, face_model=str(settings.face_model) if settings.face_model else None
        )
        stack.callback(pipeline.close)
        sealed = SealedBlobs(keys, store)
        patients = PatientService(db, audit, keys)
        yield Runtime(
            settings=settings,
            db=db,
            audit=audit,
            keys=keys,
            store=store,
            sealed=sealed,
            tenants=TenantService(db, audit, keys),
            patients=patients,
            treatments=TreatmentService(db, audit, keys, patients),
            media=MediaService(db, audit, keys, sealed, patients, pipeline),
        )
