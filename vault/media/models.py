from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow

PHOTO, VIDEO = "photo", "video"
PROCESSING, READY, FAILED = "processing", "ready", "failed"
DELETED = "deleted"  # shredded by DELETE /v1/media/{id}: every path answers 410 (vault/lifecycle/erasure.py)
PHASES = ("before", "after", "progress", "adverse", "other")
ORIGINAL, THUMB_256, THUMB_1024 = "original", "thumb256", "thumb1024"
THUMBNAILS = {256: THUMB_256, 1024: THUMB_1024}


class Media(Base):
    """One photo or video. ``capture`` (time, device, original size) is ciphertext
    under the patient DEK; face boxes are positions, kept clear for the consent gate."""

    __tablename__ = "media"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_media_patient_id_id", "patient_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    treatment_id: Mapped[str | None] = mapped_column(ForeignKey("treatments.id"))
    kind: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(12))
    phase: Mapped[str] = mapped_column(String(12))
    mime: Mapped[str] = mapped_column(String(40))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    capture: Mapped[bytes | None] = mapped_column(LargeBinary)
    faces_detected: Mapped[bool] = mapped_column(Boolean, default=True)
    faces_count: Mapped[int] = mapped_column(Integer, default=0)
    faces_boxes: Mapped[str] = mapped_column(Text, default="[]")
    faces_assumed: Mapped[bool] = mapped_column(Boolean, default=True)
    face_detector: Mapped[str] = mapped_column(String(32), default="")
    #: the full-resolution search (vault/media/faces.py): "pending" | "searched" | "incomplete"
    faces_state: Mapped[str] = mapped_column(String(12), default="pending", server_default="incomplete")
    #: a person's review overrides the detector: "identifiable" | "not_identifiable" | None
    face_review: Mapped[str | None] = mapped_column(String(20))
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(String(200))
    #: keyed hashes (tenant blind-index key) of the Idempotency-Key scope and of the body
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    body_digest: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MediaBlob(Base):
    """One stored rendition. Its id is the storage key and the key-store object id:
    a random id, encrypted under its own object key (wrapped by the patient DEK)."""

    __tablename__ = "media_blobs"
    __table_args__ = (UniqueConstraint("media_id", "rendition"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    media_id: Mapped[str] = mapped_column(ForeignKey("media.id"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    rendition: Mapped[str] = mapped_column(String(16))
    mime: Mapped[str] = mapped_column(String(40))
    plain_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
