"""Consent events (append-only) and releases.

Nothing here is ever updated in place except a release's delivery bookkeeping
(``downloaded_at``, ``recalled_at``, ``blob_id`` once its rendition is shredded):
a consent change is a new event, a withdrawal is a new event that names the grant it
withdraws. Free text (notes, recipients) is ciphertext under the patient DEK, so a
patient's erasure covers it; scopes, purposes and times stay clear for the gate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vault.db import Base, UTCDateTime, new_id, utcnow


class ConsentRecord(Base):
    """One consent event: a grant or a withdrawal. ``purposes`` is a comma-joined sorted
    list; ``media_ids`` a JSON list (listed-media scope only)."""

    __tablename__ = "consent_events"
    __table_args__ = (
        Index("ix_consent_events_patient_id_recorded_at", "patient_id", "recorded_at"),
        CheckConstraint("kind IN ('grant', 'withdrawal')", name="kind"),
        CheckConstraint("scope IN ('patient', 'treatment', 'media')", name="scope"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    kind: Mapped[str] = mapped_column(String(12))
    purposes: Mapped[str] = mapped_column(String(100))
    identifiable: Mapped[bool] = mapped_column(Boolean, default=False)
    scope: Mapped[str] = mapped_column(String(12))
    treatment_id: Mapped[str | None] = mapped_column(ForeignKey("treatments.id"))
    media_ids: Mapped[str] = mapped_column(Text, default="[]")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: for a withdrawal: the grant it withdraws
    withdraws_id: Mapped[str | None] = mapped_column(ForeignKey("consent_events.id"))
    #: the signed form: a sealed blob (random id), its sniffed type and plaintext size
    evidence_blob_id: Mapped[str | None] = mapped_column(String(32))
    evidence_mime: Mapped[str | None] = mapped_column(String(40))
    evidence_size: Mapped[int | None] = mapped_column(BigInteger)
    notes: Mapped[bytes | None] = mapped_column(LargeBinary)  # sealed
    recorded_by: Mapped[str] = mapped_column(String(64))  # token id
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Release(Base):
    """One release of one photo or video for one purpose to one recipient.

    ``rendition`` is ``original`` (the stripped original, served from the media's own
    blob) or ``deidentified`` (a face-redacted JPEG made for this release, in its own
    sealed blob ``blob_id``, shredded after the one download or when the link expires).
    """

    __tablename__ = "releases"
    __table_args__ = (
        Index("ix_releases_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_releases_media_id", "media_id"),
        Index("ix_releases_patient_id", "patient_id"),
        Index("ix_releases_pair_media_id", "pair_media_id"),
        CheckConstraint("rendition IN ('original', 'deidentified')", name="rendition"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    media_id: Mapped[str] = mapped_column(ForeignKey("media.id"))
    purpose: Mapped[str] = mapped_column(String(20))
    rendition: Mapped[str] = mapped_column(String(16))
    consent_id: Mapped[str | None] = mapped_column(ForeignKey("consent_events.id"))
    recipient: Mapped[bytes] = mapped_column(LargeBinary)  # sealed
    released_by: Mapped[str] = mapped_column(String(64))  # token id
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    downloaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    blob_id: Mapped[str | None] = mapped_column(String(32))
    blob_size: Mapped[int | None] = mapped_column(BigInteger)
    mime: Mapped[str] = mapped_column(String(40))
    #: set when a withdrawal (or an erasure) put this release on a recall list
    recalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    recall_event_id: Mapped[str | None] = mapped_column(String(32))
    #: a recalled release whose image someone confirmed removed (POST /v1/releases/{id}/takedown):
    #: when and by whom (the actor's token or staff principal id)
    taken_down_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    taken_down_by: Mapped[str | None] = mapped_column(String(64))
    #: the last time an open recall was re-notified to the webhooks (VAULT_RECALL_RENOTIFY_HOURS)
    recall_renotified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: a de-identified release: the approval whose rectangles it carries (None under ``auto``)
    #: and the opaque handle marketing asked by
    approval_id: Mapped[str | None] = mapped_column(String(32))
    handle: Mapped[str | None] = mapped_column(String(40))
    #: a before/after composite: its second ("after") photo; ``media_id`` is the first.
    #: A withdrawal or erasure reaching either photo recalls the composite.
    pair_media_id: Mapped[str | None] = mapped_column(ForeignKey("media.id"))
