"""What the DICOM export endpoints answer (published in the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

Status = Literal["pending", "sending", "sent", "failed"]

from pydantic import BaseModel, ConfigDict, Field


class DicomExportOut(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    media_id: str
    patient_id: str
    status: Status = Field(
        description="pending: queued; sending: being built or sent (retried after a failure); sent: the PACS "
                    "stored it; failed: every attempt failed (see error)")
    attempts: int = Field(description="send attempts so far")
    error: str | None = Field(None, description="the last failure, a short code such as http_503, unreachable, "
                                                "refused_private_address, timeout")
    study_instance_uid: str | None = Field(None, description="the study (one per treatment, or one per patient "
                                                             "for photos without a treatment)")
    series_instance_uid: str | None = Field(None, description="the series (per treatment and phase)")
    sop_instance_uid: str | None = Field(None, description="the instance; the same photo always gets the same UID")
    transfer_syntax: str | None = Field(None, description="1.2.840.10008.1.2.4.50 (the baseline JPEG as stored) "
                                                          "or 1.2.840.10008.1.2.1 (uncompressed, converted)")
    size_bytes: int | None = Field(None, description="size of the DICOM file sent")
    created_at: str
    updated_at: str
    sent_at: str | None = None
