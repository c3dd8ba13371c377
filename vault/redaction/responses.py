"""What the release-policy and redaction-review endpoints answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class PolicyView(BaseModel):
    deidentified: str  # "review" | "auto"
    updated_by: str | None
    updated_at: str | None


class ApprovalView(BaseModel):
    id: str
    digest: str
    rects: list[list[int]]
    approved_by: str
    approved_at: str


class RedactionView(BaseModel):
    media_id: str
    width: int
    height: int
    #: the final fill rectangles [x, y, w, h] in displayed pixels: exactly what is filled
    boxes: list[list[int]]
    source: str  # "detector" | "reviewer"
    digest: str
    orientation: int
    renderer: str
    detector: str
    #: ``pending`` (no approval holds), ``approved``, or ``identifiable`` (a reviewer marked it)
    state: str
    approval: ApprovalView | None
    #: the full-resolution redacted JPEG exactly as a release carries it
    preview_url: str


class ReviewItem(BaseModel):
    media_id: str
    patient_id: str
    state: Literal["pending", "approved"]
    purposes: list[str]
    approval_id: str | None
    approved_at: str | None


class ReviewPage(BaseModel):
    items: list[ReviewItem]
    next_cursor: str | None
