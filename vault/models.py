"""Every table of the metadata database, imported in one place for Alembic."""

from vault.audit.models import AuditEntry, AuditHead
from vault.db import Base
from vault.jobs.models import Job, JobSchedule  # noqa: F401
from vault.media.models import Media, MediaBlob
from vault.patients.models import Patient
from vault.tenants.models import ApiToken, Tenant
from vault.treatments.models import Treatment

__all__ = ["ApiToken", "AuditEntry", "AuditHead", "Base", "Media", "MediaBlob", "Patient", "Tenant", "Treatment"]
