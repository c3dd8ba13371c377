"""What the media endpoints answer: pydantic models the services return and the
views serialise (and the OpenAPI document publishes). Timestamps stay the ISO 8601
strings the API has always sent."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class FaceSummary(BaseModel):
    """The detector's finding and a person's review; ``identifiable`` is what counts."""

    model_config = ConfigDict(frozen=True)
    detected: bool
    count: int
    boxes: list[Any]
    assumed: bool
    detector: str | None
    review: str | None
    identifiable: bool
    #: the full-resolution search: "pending" | "searched" | "incomplete" (see docs/media.md)
    state: str = "searched"


class MediaView(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    patient_id: str
    treatment_id: str | None
    kind: str
    status: str
    phase: str
    mime: str
    width: int | None
    height: int | None
    faces: FaceSummary
    capture: dict[str, Any] | None
    #: the capture time the pipeline read from the camera's metadata (local time, with
    #: the offset when the camera wrote one), also inline in listings; None when unknown
    captured_at: str | None = None
    failure_reason: str | None
    created_at: str
    updated_at: str


class MediaGroup(BaseModel):
    before: list[str]
    after: list[str]


class MediaPage(BaseModel):
    items: list[MediaView]
    next_cursor: str | None
    groups: dict[str, MediaGroup]


class PlaybackLink(BaseModel):
    url: str
    expires_at: str
