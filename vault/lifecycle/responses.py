"""What the lifecycle endpoints answer: pydantic models the services return and the
views serialise (and the OpenAPI document publishes). Timestamps stay the ISO 8601
strings the API has always sent; fields are declared in the order the API has always
sent them. ``extra="forbid"``: a field a model does not declare fails loudly instead
of vanishing from the JSON.

An erasure receipt is a signed document: :class:`ErasureReceiptOut` carries it as the
exact mapping that was signed (or stored), never re-modelled."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from vault.consent.responses import ReleaseView


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- erasure ------------------------------------------------------------------------------
class ErasureReceiptOut(_Out):
    receipt: dict[str, Any] = Field(description="the signed erasure receipt document")
    signature: str = Field(description="base64 signature of the canonical receipt")

    @classmethod
    def of(cls, signed: dict[str, Any]) -> ErasureReceiptOut:
        """``{"receipt", "signature"}`` as signed (or as stored), unchanged."""
        return cls(receipt=signed["receipt"], signature=signed["signature"])


class MediaDeletedOut(_Out):
    media_id: str
    status: str
    destroyed_key_ids: list[str]
    recall: list[ReleaseView] = Field(description="the recalled releases (release views)")
    irrecoverable_after: str | None = Field(None, description="when copies (backups) can no longer open the object's key")
    no_date_reason: str | None = Field(None, description="why no date can be promised yet (the patient key is renewed "
                                                        "at the next KEK rotation)")


# -- legal hold and restriction ---------------------------------------------------------------
class LegalHoldOut(_Out):
    patient_id: str
    legal_hold: bool
    placed_at: str | None
    placed_by: str | None
    lifted_at: str | None


class RestrictionOut(_Out):
    patient_id: str
    status: str


# -- retention --------------------------------------------------------------------------------
class RetentionRuleOut(_Out):
    clock: str
    erase_after: str


class RetentionPolicyOut(_Out):
    rules: list[RetentionRuleOut]
    updated_at: str | None
    updated_by: str | None
    acts_after: str | None


class DueReasonOut(_Out):
    """One rule's verdict on a due patient."""

    clock: str
    at: str
    erase_after: str
    due_since: str


class DuePatientOut(_Out):
    patient_id: str
    reasons: list[DueReasonOut]


class ErasedPatientOut(_Out):
    patient_id: str
    receipt_id: str


class SkippedPatientOut(_Out):
    patient_id: str
    reason: str


class DryRunOut(_Out):
    id: str
    dry_run: bool
    due: list[DuePatientOut]
    created_at: str
    policy: RetentionPolicyOut
    blocked_without_review: dict[str, Any] | None


class SweepRunOut(_Out):
    id: str | None
    dry_run: bool
    review_id: str | None
    erased: list[ErasedPatientOut]
    skipped: list[SkippedPatientOut]


class SweepProgressOut(_Out):
    """How far a real sweep has got: each patient it set out to erase is erased (key
    destroyed, receipt signed: in the request) and then cleaned up (the
    ``lifecycle.purge_patient`` job: blobs deleted, recalls and webhooks sent)."""

    id: str
    status: str = Field(description="erasing | cleaning_up | done | failed (a clean-up job gave up)")
    progress: float = Field(description="0..1: erasures and clean-ups done, of those the sweep has to do")
    due: int = Field(description="patients the sweep set out to erase")
    erased: int
    skipped: int | None = Field(description="patients skipped (a legal hold, erased meanwhile); null while erasing")
    cleaned_up: int
    failed: int = Field(description="clean-up jobs that gave up (see `vault jobs list`)")
    created_at: str


class SweepOut(RootModel[DryRunOut | SweepRunOut]):
    """A dry run (who is due, and why) or a real sweep (who was erased or skipped)."""


# -- exports ------------------------------------------------------------------------------------
class ExportOut(_Out):
    id: str
    patient_id: str
    status: str
    progress: float
    items_done: int
    items_total: int
    size: int | None
    error: str | None
    created_at: str
    ready_at: str | None
    expires_at: str | None
    downloaded_at: str | None
