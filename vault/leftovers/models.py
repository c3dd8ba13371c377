"""Writer leases: one row per blob being written, from before its object key exists
until the row that references the blob commits (or the write is rolled back)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, utcnow


class BlobWrite(Base):
    """A write in progress. The writer extends ``lease_until`` while it works (a video
    on clinic Wi-Fi, a remux or an export may take hours); the leftover sweep only
    looks at blobs whose lease expired more than the grace period ago. Ids only: the
    patient id lets the sweep shred the object key in the ledger."""

    __tablename__ = "blob_writes"

    blob_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    # No foreign keys: a write outlives nothing it could point at (a rolled-back patient).
    patient_id: Mapped[str] = mapped_column(String(64))
    writer: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
