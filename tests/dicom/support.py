"""Helpers of the DICOM export tests: upload, export, run the job (retries made due at once)."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
from PIL import Image, ImageOps
from sqlalchemy import update

from tests.lifecycle.support import Api, drain
from vault.db import utcnow
from vault.dicom.service import SEND_DICOM
from vault.jobs.models import QUEUED, Job


async def upload(api: Api, patient_id: str, data: bytes, mime: str, *, treatment_id: str | None = None,
                 phase: str = "before") -> dict:
    params = {"phase": phase, **({"treatment_id": treatment_id} if treatment_id else {})}
    return await api.json("POST", f"/v1/patients/{patient_id}/media", role="practitioner", status=201, data=data,
                          params=params, headers={"Content-Type": mime})


async def request_export(api: Api, media_id: str, *, role: str = "practitioner") -> dict:
    resp, body = await api.call("POST", f"/v1/media/{media_id}/dicom-exports", role=role, status=202)
    started = json.loads(body)
    assert resp.headers["Location"] == f"/v1/dicom-exports/{started['id']}"
    assert started["status"] == "pending" and started["attempts"] == 0 and started["media_id"] == media_id
    return started


async def run_export(api: Api, export_id: str, *, rounds: int = 12) -> dict:
    """Run the real worker until the export is sent or failed. A failed attempt is queued
    for later by the backoff (its delays are the runner's business, tests/jobs): each round
    makes this export's retry due now."""
    for _ in range(rounds):
        await drain(api.rt, SEND_DICOM, due_only=True)
        status = await api.json("GET", f"/v1/dicom-exports/{export_id}", role="dpo")
        if status["status"] in ("sent", "failed"):
            return status
        async with api.rt.db.transaction() as session:
            await session.execute(update(Job).where(Job.kind == SEND_DICOM, Job.state == QUEUED,
                                                    Job.payload.contains(export_id)).values(run_at=utcnow()))
    raise AssertionError(f"the export did not finish: {status}")


async def stored_original(api: Api, media_id: str) -> bytes:
    _, body = await api.call("GET", f"/v1/media/{media_id}/content", role="records", status=200)
    return body


def decoded(data: bytes) -> np.ndarray:
    """The stored original's pixels as any viewer shows them: decoded, turned upright by
    its orientation, 8-bit RGB (Pillow and pillow-heif, independently of the vault)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.asarray(image.convert("RGB"))


def dataset(file: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(file))


async def audit_actions(api: Api, media_id: str) -> list[tuple[str, str]]:
    entries = await api.rt.audit.entries(api.clinic.id, limit=1000, target=media_id)
    return [(e.action, e.outcome) for e in entries]
