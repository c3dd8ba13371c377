from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow

PATIENT_DEK, OBJECT = "patient_dek", "object"
KINDS = (PATIENT_DEK, OBJECT)
ERASURE, OBJECT_DELETE, UPLOAD_ROLLBACK = "erasure", "object_delete", "upload_rollback"
LEFTOVER = "leftover"  # a crashed writer's key, shredded by the leftover sweep (vault/leftovers)
CAUSES = (ERASURE, OBJECT_DELETE, UPLOAD_ROLLBACK, LEFTOVER)


class ShredRecord(Base):
    """One destroyed key: ids and time only, never key bytes.

    It lives in the metadata database, apart from the key store it protects, so a
    restored key-store backup can be re-shredded from it. ``key_id`` is NULL only
    when a crash lost the id between the shred and this row (see
    :func:`vault.shredding.service.reconcile`); such a row is re-shredded by
    (tenant, patient) or (tenant, patient, object) instead of by key id.
    """

    __tablename__ = "shred_ledger"
    __table_args__ = (
        CheckConstraint("kind IN ('patient_dek', 'object')", name="kind"),
        Index("ix_shred_ledger_tenant_patient", "tenant_id", "patient_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    key_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    # No foreign keys to patients or media: a rolled-back create leaves no row to point at.
    patient_id: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(64))
    destroyed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    cause: Mapped[str] = mapped_column(String(32))
