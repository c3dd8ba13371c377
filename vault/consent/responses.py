"""What the consent and release endpoints answer: pydantic models the services return
and the views serialise. Timestamps stay the ISO 8601 strings the API has always sent.
A few fields are absent (not null) in some answers, as they always were: those are
listed in ``OMIT_UNSET`` and left out unless the service set them."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer


class _Response(BaseModel):
    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.OMIT_UNSET - self.model_fields_set:
            data.pop(name, None)
        return data


class EvidenceInfo(BaseModel):
    mime: str | None
    size: int | None


class ConsentView(_Response):
    OMIT_UNSET = frozenset({"withdrawn_purposes"})  # grants only
    id: str
    patient_id: str
    kind: str
    purposes: list[str]
    identifiable: bool | None
    scope: str
    treatment_id: str | None
    media_ids: list[str] | None
    expires_at: str | None
    withdraws_id: str | None
    evidence: EvidenceInfo | None
    notes: str | None
    recorded_by: str
    recorded_at: str
    withdrawn_purposes: list[str] | None = None


class ConsentList(BaseModel):
    items: list[ConsentView]
    next_cursor: str | None = None


class ReleaseView(_Response):
    # Marketing works with media, never with patients; a de-identified release it sees
    # only by its handle (no media, consent or approval id).
    OMIT_UNSET = frozenset({"patient_id", "media_id", "consent_id", "handle", "approval_id", "pair_media_id"})
    id: str
    media_id: str | None = None
    #: a before/after composite: its after photo (``media_id`` is the before)
    pair_media_id: str | None = None
    handle: str | None = None
    patient_id: str | None = None
    purpose: str
    rendition: str
    recipient: str | None
    released_by: str
    consent_id: str | None = None
    approval_id: str | None = None
    created_at: str
    expires_at: str
    downloaded_at: str | None
    recalled_at: str | None
    taken_down_at: str | None = None
    taken_down_by: str | None = None


class Withdrawal(BaseModel):
    withdrawal: ConsentView
    recall: list[ReleaseView]


class ReleasePage(BaseModel):
    items: list[ReleaseView]
    next_cursor: str | None


class ReleasableItem(_Response):
    """An identifiable item carries ``media_id`` (and may keep its grouping fields); a
    de-identified one only an opaque per-purpose ``handle``."""

    OMIT_UNSET = frozenset({"media_id", "handle", "phase", "treatment_id", "consent_id"})
    media_id: str | None = None
    handle: str | None = None
    purpose: str
    rendition: str
    kind: str
    phase: str | None = None
    treatment_id: str | None = None
    consent_id: str | None = None
    thumbnail_url: str
    thumbnail_expires_at: str


class ReleasablePage(BaseModel):
    items: list[ReleasableItem]
    next_cursor: str | None


class ReleaseMade(_Response):
    OMIT_UNSET = frozenset({"media_id", "handle", "consent_id"})
    id: str
    media_id: str | None = None
    handle: str | None = None
    purpose: str
    rendition: str
    consent_id: str | None = None
    download_url: str
    expires_at: str
