"""The release policy, a photo's redaction state, its approvals, and the opaque
per-purpose handles marketing sees de-identified items by.

The redacted renditions themselves (full resolution and the 256 px thumbnail made from
it) are ordinary ``media_blobs`` rows (renditions ``redacted`` and ``redacted256``):
sealed like every other rendition, shredded with the photo or the patient, and known to
the leftover sweep. ``redactions.rendered_digest`` says which digest they were made for.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow

REVIEW, AUTO = "review", "auto"


class ReleasePolicy(Base):
    """A tenant's policy for de-identified releases; no row means ``review``."""

    __tablename__ = "release_policies"
    __table_args__ = (CheckConstraint("deidentified IN ('review', 'auto')", name="deidentified"),)

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    deidentified: Mapped[str] = mapped_column(String(8), default=REVIEW)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Redaction(Base):
    """One photo's redaction: the reviewer's boxes (None: the detector's), what the stored
    redacted renditions were made for, and the approval that currently holds (if any)."""

    __tablename__ = "redactions"

    media_id: Mapped[str] = mapped_column(ForeignKey("media.id"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    #: JSON [[x, y, w, h], ...] in displayed coordinates, filled as drawn; NULL: the detector's
    boxes: Mapped[str | None] = mapped_column(Text)
    boxes_by: Mapped[str | None] = mapped_column(String(64))
    #: the stored original these facts were read from, its keyed digest and EXIF orientation;
    #: HMAC-SHA256 under the tenant's ``redaction.original`` purpose key (never a plain
    #: hash, which would confirm a guessed photo)
    original_blob_id: Mapped[str | None] = mapped_column(String(32))
    original_hmac: Mapped[str | None] = mapped_column(String(64))
    orientation: Mapped[int | None] = mapped_column(Integer)
    #: the digest the stored ``redacted``/``redacted256`` renditions were rendered for
    rendered_digest: Mapped[str | None] = mapped_column(String(64))
    approval_id: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RedactionApproval(Base):
    """A person approved exactly these fill rectangles (digest) on this rendition.
    Voided (``voided_at``) by any later change; never deleted."""

    __tablename__ = "redaction_approvals"
    __table_args__ = (Index("ix_redaction_approvals_tenant_id_approved_at", "tenant_id", "approved_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    media_id: Mapped[str] = mapped_column(ForeignKey("media.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    digest: Mapped[str] = mapped_column(String(64))
    #: JSON [[x, y, w, h], ...]: the final fill rectangles the digest covers
    rects: Mapped[str] = mapped_column(Text)
    approved_by: Mapped[str] = mapped_column(String(64))
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    voided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    voided_by: Mapped[str | None] = mapped_column(String(64))


class ReleaseHandle(Base):
    """The opaque name of one (photo, purpose) in marketing's view: random, per purpose,
    never an id used anywhere else. Marketing's listing is ordered by it."""

    __tablename__ = "release_handles"
    __table_args__ = (
        UniqueConstraint("media_id", "purpose"),
        Index("ix_release_handles_tenant_id_handle", "tenant_id", "handle"),
    )

    handle: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    media_id: Mapped[str] = mapped_column(ForeignKey("media.id"))
    purpose: Mapped[str] = mapped_column(String(20))
