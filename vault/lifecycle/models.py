"""Lifecycle tables: legal holds, erasure requests and receipts, retention policies and
sweeps, subject-access exports.

Nothing here holds personal data in the clear. A hold's reason is sealed under the
patient DEK (it dies with the patient); an erasure's reason is sealed under a tenant
key (:mod:`vault.lifecycle.reasons`), because it must outlive the patient key it
explains. Receipts are signed JSON of ids, counts and times.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow

# erasure request states
PENDING, DONE = "pending", "done"
# erasure origins
BY_REQUEST, BY_RETENTION = "request", "retention"
# export states
EXPORT_PENDING, EXPORT_RUNNING, EXPORT_READY = "pending", "running", "ready"
EXPORT_FAILED, EXPORT_DOWNLOADED, EXPORT_EXPIRED = "failed", "downloaded", "expired"
EXPORT_STATES = (EXPORT_PENDING, EXPORT_RUNNING, EXPORT_READY, EXPORT_FAILED, EXPORT_DOWNLOADED, EXPORT_EXPIRED)


class LegalHold(Base):
    """The hold on one patient (at most one row each). Lifting keeps the row
    (``lifted_at``); placing again replaces the reason. ``reason`` is sealed under the
    patient DEK, bound to this table, column and patient id."""

    __tablename__ = "legal_holds"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    reason: Mapped[bytes | None] = mapped_column(LargeBinary)
    placed_by: Mapped[str] = mapped_column(String(64))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lifted_by: Mapped[str | None] = mapped_column(String(64))
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ErasureRequest(Base):
    """Written before the patient's key is destroyed, so a crash after the shred is
    finished by :meth:`vault.lifecycle.erasure.ErasureService.reconcile`. ``dek_id`` is
    read before the shred (the receipt names it); ``reason`` is sealed under the
    tenant's lifecycle key."""

    __tablename__ = "erasure_requests"
    __table_args__ = (
        Index("ix_erasure_requests_state", "state"),
        CheckConstraint("state IN ('pending', 'done')", name="state"),
        CheckConstraint("origin IN ('request', 'retention')", name="origin"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), unique=True)
    state: Mapped[str] = mapped_column(String(12), default=PENDING)
    origin: Mapped[str] = mapped_column(String(12), default=BY_REQUEST)
    sweep_id: Mapped[str | None] = mapped_column(String(32))
    dek_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[bytes | None] = mapped_column(LargeBinary)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ErasureReceipt(Base):
    """The signed receipt of a patient's erasure, returned again on every later call.
    It holds ids, counts and times only (see :mod:`vault.receipts`)."""

    __tablename__ = "erasure_receipts"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    receipt_id: Mapped[str] = mapped_column(String(32), unique=True)
    document: Mapped[str] = mapped_column(Text)  # canonical JSON of the signed receipt
    signature: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RetentionPolicy(Base):
    """A tenant's retention rules (JSON list of ``{"clock", "erase_after"}``)."""

    __tablename__ = "retention_policies"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    rules: Mapped[str] = mapped_column(Text, default="[]")
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RetentionSweep(Base):
    """One sweep: a dry run (its ``due`` list is what a reviewer saw) or a real one.
    ``policy_updated_at`` ties a dry run to the policy it was computed under."""

    __tablename__ = "retention_sweeps"
    __table_args__ = (Index("ix_retention_sweeps_tenant_id_created_at", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    dry_run: Mapped[bool] = mapped_column(Boolean)
    origin: Mapped[str] = mapped_column(String(12))  # "api" | "periodic"
    due: Mapped[str] = mapped_column(Text, default="[]")  # JSON [{"patient_id", "reasons"}]
    erased: Mapped[str] = mapped_column(Text, default="[]")  # JSON [patient ids]
    outcome: Mapped[str] = mapped_column(String(32))
    review_id: Mapped[str | None] = mapped_column(String(32))
    used_by: Mapped[str | None] = mapped_column(String(32))  # the real sweep that acted on this dry run
    policy_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Export(Base):
    """A subject-access export: a ZIP built by a job into one sealed blob of the patient,
    downloaded once, then shredded; shredded unread when it expires."""

    __tablename__ = "exports"
    __table_args__ = (
        Index("ix_exports_patient_id", "patient_id"),
        Index("ix_exports_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    status: Mapped[str] = mapped_column(String(12), default=EXPORT_PENDING)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    items_done: Mapped[int] = mapped_column(Integer, default=0)
    items_total: Mapped[int] = mapped_column(Integer, default=0)
    blob_id: Mapped[str | None] = mapped_column(String(32))
    plain_size: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(String(100))
    requested_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    downloaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
