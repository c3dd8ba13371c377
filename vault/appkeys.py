"""Typed application keys: the clients and services that ``create_app`` opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from keys.store import KeyStore
    from vault.audit.service import AuditLog
    from vault.config import Settings
    from vault.runtime import Runtime
    from vault.db import Database
    from vault.media.service import MediaService
    from vault.patients.service import PatientService
    from vault.treatments.service import TreatmentService
    from vault.tenants.service import TenantService

SETTINGS = web.AppKey("settings", "Settings")
RUNTIME = web.AppKey("runtime", "Runtime")
DB = web.AppKey("db", "Database")
AUDIT = web.AppKey("audit", "AuditLog")
KEYS = web.AppKey("keys", "KeyStore")
STORE = web.AppKey("store", Any)
TENANTS = web.AppKey("tenants", "TenantService")
PATIENTS = web.AppKey("patients", "PatientService")
TREATMENTS = web.AppKey("treatments", "TreatmentService")
MEDIA = web.AppKey("media", "MediaService")
CONSENTS = web.AppKey("consents", Any)  # vault.consent.service.ConsentService
RELEASES = web.AppKey("releases", Any)  # vault.consent.releases.ReleaseService
WEBHOOKS = web.AppKey("webhooks", Any)  # vault.webhooks.service.WebhookService
METRICS = web.AppKey("metrics", Any)
UPLOAD_LIMITS = web.AppKey("upload_limits", Any)  # vault.http.limits.UploadLimits
