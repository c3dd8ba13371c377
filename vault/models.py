"""Every table of the metadata database, imported in one place for Alembic."""

from vault.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from vault.consent.models import ConsentRecord, Release  # noqa: F401
from vault.db import Base
from vault.dicom.models import DicomExport  # noqa: F401
from vault.idempotent import IdempotentRequest  # noqa: F401
from vault.jobs.models import Job, JobSchedule, WorkerHeartbeat  # noqa: F401
from vault.leftovers.models import BlobWrite  # noqa: F401
from vault.lifecycle.models import (  # noqa: F401
    ErasureReceipt, ErasureRequest, Export, LegalHold, RetentionPolicy, RetentionSweep,
)
from vault.media.models import Media, MediaBlob
from vault.patients.models import Patient
from vault.redaction.models import Redaction, RedactionApproval, ReleaseHandle, ReleasePolicy  # noqa: F401
from vault.shredding.models import ShredRecord
from vault.staff.models import StaffAccount, StaffEnrolment, StaffSession  # noqa: F401
from vault.tenants.models import ApiToken, Tenant
from vault.treatments.models import Treatment
from vault.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookSecret  # noqa: F401

__all__ = ["ApiToken", "AuditCheckpoint", "AuditEntry", "AuditHead", "Base", "Media", "MediaBlob", "Patient", "ShredRecord", "Tenant", "Treatment"]
