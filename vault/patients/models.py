from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow

ACTIVE, RESTRICTED, ERASED = "active", "restricted", "erased"
STATUSES = (ACTIVE, RESTRICTED, ERASED)


class Patient(Base):
    """A patient. Every personal column is AES-GCM ciphertext under the patient DEK
    (AAD names table, column and row), so destroying the DEK erases them all.
    ``ref_index`` is a keyed HMAC blind index of ``external_ref`` for lookups and
    uniqueness; it is cleared on erasure, leaving a pseudonymous tombstone."""

    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("tenant_id", "ref_index"),
        Index("ix_patients_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    ref_index: Mapped[str | None] = mapped_column(String(64))
    external_ref: Mapped[bytes | None] = mapped_column(LargeBinary)
    display_name: Mapped[bytes | None] = mapped_column(LargeBinary)
    date_of_birth: Mapped[bytes | None] = mapped_column(LargeBinary)
    notes: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
