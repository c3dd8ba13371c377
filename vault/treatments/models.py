from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow


class Treatment(Base):
    """Name, area and details are ciphertext under the patient DEK. ``performed_on``
    stays clear: retention rules ("7 years after the last treatment") are computed
    from it without unwrapping every patient's key."""

    __tablename__ = "treatments"
    __table_args__ = (Index("ix_treatments_patient_id_performed_on", "patient_id", "performed_on"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    name: Mapped[bytes] = mapped_column(LargeBinary)
    area: Mapped[bytes | None] = mapped_column(LargeBinary)
    details: Mapped[bytes | None] = mapped_column(LargeBinary)
    performed_on: Mapped[date] = mapped_column(Date)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
