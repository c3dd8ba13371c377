"""Typed application keys: the clients and services that ``create_app`` opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from keys.store import KeyStore
    from vault.audit.service import AuditLog
    from vault.config import Settings
    from vault.db import Database
    from vault.media.service import MediaService
    from vault.patients.service import PatientService
    from vault.treatments.service import TreatmentService
    from vault.tenants.service import TenantService

SETTINGS = web.AppKey("settings", "Settings")
DB = web.AppKey("db", "Database")
AUDIT = web.AppKey("audit", "AuditLog")
KEYS = web.AppKey("keys", "KeyStore")
STORE = web.AppKey("store", Any)
TENANTS = web.AppKey("tenants", "TenantService")
PATIENTS = web.AppKey("patients", "PatientService")
TREATMENTS = web.AppKey("treatments", "TreatmentService")
MEDIA = web.AppKey("media", "MediaService")
METRICS = web.AppKey("metrics", Any)
