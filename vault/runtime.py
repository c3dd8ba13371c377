"""Open every client and service the vault needs, in dependency order, and close
them in reverse. Used by the app factory (as a cleanup context), the CLI and
workers, so all three run on the same wiring.

:class:`Runtime` is the composition root's container: the app factory, the domains'
``setup`` hooks, the CLI and the job adapters in ``workers/jobs/`` read it; every
service below is built from explicit parts and never receives it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from keys.keyring import FileKeyring
from keys.providers import open_root_key
from keys.store import KeyStore, holds_keys
from vault import signedurls
from vault.audit.checkpoints import Checkpoints
from vault.backup.journal import JournaledLedger, journals_for
from vault.audit.reads import AuditReads
from vault.audit.service import AuditLog
from vault.config import Settings
from vault.consent.composites import CompositeReleases
from vault.consent.releases import ReleaseService
from vault.consent.service import ConsentService
from vault.db import Database
from vault.dicom.service import DicomExports
from vault.dicom.stow import DicomWebTarget
from vault.db.notify import Notifier, open_notifier, watch_key_cache
from vault.lifecycle.service import Lifecycle
from vault.media.processing import PhotoPipeline
from vault.media.service import MediaService
from vault.instruments import MeteredRootKey
from vault.patients.service import PatientService
from vault.readiness import Readiness
from vault.redaction.service import RedactionService
from vault.leftovers.leases import WriteLeases
from vault.sealed import SealedBlobs
from vault.shredding.receipts import ReceiptService
from vault.shredding.service import ShredLedger
from vault.staff.service import StaffService
from vault.storage.base import BlobStore
from vault.storage import open_store
from vault.tenants.service import TenantService
from vault.treatments.service import TreatmentService
from vault.webhooks.delivery import AllowList
from vault.webhooks.service import WebhookService

log = logging.getLogger("vault.keys")


@dataclass
class Runtime:
    settings: Settings
    db: Database
    audit: AuditLog
    keys: KeyStore
    store: BlobStore
    sealed: SealedBlobs
    ledger: ShredLedger
    tenants: TenantService
    patients: PatientService
    treatments: TreatmentService
    media: MediaService
    webhooks: WebhookService
    consents: ConsentService
    releases: ReleaseService
    composites: CompositeReleases = field(init=False)
    readiness: Readiness
    checkpoints: Checkpoints
    audit_reads: AuditReads
    notifier: Notifier  # cache invalidation across nodes (LISTEN/NOTIFY on PostgreSQL)
    lifecycle: Lifecycle = field(init=False)  # built from the services above
    receipts: ReceiptService = field(init=False)  # answers finality through lifecycle.erasure
    redactions: RedactionService = field(init=False)  # built before the release service, which uses it
    staff: StaffService = field(init=False)  # the web app's logins (vault/staff)
    dicom: DicomExports = field(init=False)  # DICOM export to a PACS (vault/dicom)


def legacy_root_key_file(settings: Settings) -> Path:
    """Where the code before root-key epochs kept its single root key by default."""
    return settings.data_dir / "root.key"


async def open_configured_root_key(settings: Settings, *, create: bool = True):
    """A local keyring is created only for an empty key store, or to receive the legacy
    key of a data folder from before epochs (and only where ``create``): a data folder
    restored or copied without its keyring must fail loudly, not start over with new
    keys under which nothing decrypts."""
    url = urlsplit(settings.root_key_url)
    legacy = legacy_root_key_file(settings)
    if create and url.scheme == "file" and not Path(unquote(url.path)).exists():
        create = legacy.is_file() or not await holds_keys(settings.keystore_url)
    provider = open_root_key(settings.root_key_url, production=settings.production, create=create)
    if isinstance(provider, FileKeyring) and provider.import_legacy(legacy):
        log.warning("moved the legacy root key out of the data folder into the keyring %s", provider.directory)
    return provider


async def upgrade_root_keys(settings: Settings) -> bool:
    """Part of ``vault migrate``: move a key store from before root-key epochs onto them
    (KeyStore.upgrade_legacy). True when it did work."""
    root = await open_configured_root_key(settings)
    try:
        keys = await KeyStore.open(settings.keystore_url, root, backup_window_days=settings.backup_window_days)
        try:
            return await keys.upgrade_legacy()
        finally:
            await keys.close()
    finally:
        await root.close()


@asynccontextmanager
async def runtime(
    settings: Settings, *, group_commit: bool = True, create_root_key: bool = True
) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        # Decoder workers first, before any key, token or connection of ours exists (they
        # are fresh interpreters anyway: exec, a clean environment, no inherited fds).
        pipeline = PhotoPipeline.from_settings(settings)
        pipeline.start()
        stack.push_async_callback(pipeline.close)
        db = Database(settings.database_url)
        stack.push_async_callback(db.close)
        audit = AuditLog(db)
        if group_commit:
            await audit.start(node_writer=settings.audit_socket)
            stack.push_async_callback(audit.stop)
        root = MeteredRootKey(await open_configured_root_key(settings, create=create_root_key))  # call latency/errors
        keys = await KeyStore.open(settings.keystore_url, root, cache_ttl=settings.key_cache_seconds,
                                   backup_window_days=settings.backup_window_days)
        stack.push_async_callback(keys.close)
        notifier = open_notifier(db, siblings=settings.siblings_dir, name=settings.process_name)
        watch_key_cache(notifier, keys)  # destroyed keys leave every node's cache
        await notifier.start()
        stack.push_async_callback(notifier.close)
        store = open_store(settings.storage_url)
        stack.push_async_callback(store.close)
        journal = journals_for(settings)  # every shred is also journaled, apart from backups
        if journal is not None:
            stack.push_async_callback(journal.close)
        ledger: ShredLedger = JournaledLedger(db, keys, journal=journal)
        leases = WriteLeases(db, lease_seconds=settings.blob_lease_seconds)
        stack.push_async_callback(leases.close)
        sealed = SealedBlobs(keys, store, ledger=ledger, leases=leases)
        patients = PatientService(db, audit, keys)
        tenants = TenantService(db, audit, keys, notifier=notifier)
        webhooks = WebhookService(
            db, audit, keys, allow_http_loopback=settings.webhooks_allow_http_loopback,
            allow=AllowList.of(settings.webhooks_allow_networks),
            ca_file=str(settings.webhooks_ca_file) if settings.webhooks_ca_file else None,
        )
        checkpoints = Checkpoints(db, audit, keys)
        staff_links = signedurls.StaffBounds.of(settings)
        media = MediaService(db, audit, keys, sealed, patients, pipeline, webhooks, staff_links=staff_links)
        redactions = RedactionService(db, audit, sealed, media, pipeline)
        rt = Runtime(
            settings=settings,
            db=db,
            audit=audit,
            keys=keys,
            store=store,
            sealed=sealed,
            ledger=ledger,
            tenants=tenants,
            patients=patients,
            treatments=TreatmentService(db, audit, keys, patients),
            media=media,
            webhooks=webhooks,
            consents=ConsentService(db, audit, keys, sealed, patients, webhooks),
            releases=ReleaseService(db, audit, keys, sealed, patients, pipeline, redactions=redactions,
                                    staff_links=staff_links),
            readiness=Readiness(db=db, keys=keys, store=store),
            checkpoints=checkpoints,
            audit_reads=AuditReads(audit, checkpoints, labels=tenants.labels),
            notifier=notifier,
        )
        rt.lifecycle = Lifecycle.build(
            settings, db=db, audit=audit, keys=keys, ledger=ledger, sealed=sealed, store=store, patients=patients,
            treatments=rt.treatments, media=rt.media, consents=rt.consents, webhooks=webhooks,
        )
        rt.receipts = ReceiptService(keys, rt.lifecycle.erasure)
        rt.redactions = redactions
        rt.composites = CompositeReleases(rt.releases)
        rt.staff = StaffService(db, audit, keys, idle_seconds=settings.staff_idle_seconds,
                                session_seconds=settings.staff_session_seconds)
        rt.dicom = DicomExports(db=db, audit=audit, keys=keys, sealed=sealed, patients=patients, treatments=rt.treatments,
                                media=media, pipeline=pipeline, target=DicomWebTarget.from_settings(settings))
        yield rt
