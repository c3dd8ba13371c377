"""Open every client and service the vault needs, in dependency order, and close
them in reverse. Used by the app factory (as a cleanup context), the CLI and
workers, so all three run on the same wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from keys.providers import open_root_key
from keys.store import KeyStore
from vault.audit.service import AuditLog
from vault.config import Settings
from vault.consent.releases import ReleaseService
from vault.consent.service import ConsentService
from vault.db import Database
from vault.lifecycle.service import Lifecycle
from vault.media.processing import PhotoPipeline
from vault.media.service import MediaService
from vault.patients.service import PatientService
from vault.sealed import SealedBlobs
from vault.shredding.service import ShredLedger
from vault.storage import open_store
from vault.tenants.service import TenantService
from vault.treatments.service import TreatmentService
from vault.webhooks.service import WebhookService


@dataclass
class Runtime:
    settings: Settings
    db: Database
    audit: AuditLog
    keys: KeyStore
    store: object
    sealed: SealedBlobs
    ledger: ShredLedger
    tenants: TenantService
    patients: PatientService
    treatments: TreatmentService
    media: MediaService
    webhooks: WebhookService
    consents: ConsentService
    releases: ReleaseService
    lifecycle: Lifecycle = field(init=False)  # built from the services above


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
        ledger = ShredLedger(db, keys)
        sealed = SealedBlobs(keys, store, ledger=ledger)
        patients = PatientService(db, audit, keys)
        webhooks = WebhookService(db, audit, keys, allow_http_loopback=settings.webhooks_allow_http_loopback)
        rt = Runtime(
            settings=settings,
            db=db,
            audit=audit,
            keys=keys,
            store=store,
            sealed=sealed,
            ledger=ledger,
            tenants=TenantService(db, audit, keys),
            patients=patients,
            treatments=TreatmentService(db, audit, keys, patients),
            media=MediaService(db, audit, keys, sealed, patients, pipeline),
            webhooks=webhooks,
            consents=ConsentService(db, audit, keys, sealed, patients, webhooks),
            releases=ReleaseService(db, audit, keys, sealed, patients, max_pixels=settings.max_pixels,
                                    public_url=settings.public_url),
        )
        rt.lifecycle = Lifecycle.build(
            settings, db=db, audit=audit, keys=keys, ledger=ledger, sealed=sealed, store=store, patients=patients,
            treatments=rt.treatments, media=rt.media, consents=rt.consents, webhooks=webhooks,
        )
        yield rt
