from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Index, LargeBinary, String, UniqueConstraint
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
    #: the tenant vocabulary's type ("lip filler"), the one grouping marketing may filter
    #: de-identified items by; clear, like the vocabulary (it names no one)
    type_id: Mapped[str | None] = mapped_column(ForeignKey("treatment_types.id"))


class TreatmentType(Base):
    """One word of the tenant's treatment-type vocabulary, shared by many patients (an
    admin or dpo keeps it: ``PUT /v1/treatment-types``). Not personal data: clear."""

    __tablename__ = "treatment_types"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
