"""Helpers for the lifecycle tests: a small HTTP client of the vault and a way to run
queued jobs through the real worker, in-process, on the app's own runtime."""

from __future__ import annotations

import base64
import io
import json
import secrets
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sqlalchemy import select

from vault.appkeys import RUNTIME
from tests.support.jobs import drain
from vault.jobs.models import DONE, Job


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (250, 250, 250)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Api:
    client: object
    clinic: object

    @property
    def app(self):
        return self.client.server.app

    @property
    def rt(self):
        return self.app[RUNTIME]

    def auth(self, role: str = "dpo") -> dict[str, str]:
        return self.clinic.auth(role)

    async def call(self, method: str, path: str, *, role: str = "dpo", status: int | None = None, **kwargs):
        resp = await self.client.request(method, path, headers={**kwargs.pop("headers", {}), **self.auth(role)}, **kwargs)
        body = await resp.read()
        if status is not None:
            assert resp.status == status, f"{method} {path}: {resp.status} {body[:300]!r}"
        return resp, body

    async def json(self, method: str, path: str, *, role: str = "dpo", status: int = 200, **kwargs):
        resp, body = await self.call(method, path, role=role, status=status, **kwargs)
        return json.loads(body)

    async def patient(self, **fields) -> str:
        body = {"external_ref": "MRN-" + secrets.token_hex(6), **fields}
        return (await self.json("POST", "/v1/patients", role="practitioner", status=201, json=body))["id"]

    async def photo(self, patient_id: str, *, seed: int = 0, treatment_id: str | None = None) -> str:
        params = {"phase": "after", **({"treatment_id": treatment_id} if treatment_id else {})}
        media = await self.json("POST", f"/v1/patients/{patient_id}/media", role="practitioner", status=201, data=jpeg(seed),
                                params=params, headers={"Content-Type": "image/jpeg"})
        return media["id"]

    async def treatment(self, patient_id: str, performed_on: str = "2026-03-01") -> str:
        body = {"name": "Filler", "performed_on": performed_on, "details": "2 ml, left cheek"}
        path = f"/v1/patients/{patient_id}/treatments"
        return (await self.json("POST", path, role="practitioner", status=201, json=body))["id"]

    async def consent(self, patient_id: str, *, evidence: bool = False) -> str:
        body = {"purposes": ["education", "social_media", "marketing", "publication"], "identifiable": True,
                "notes": "signed in clinic"}
        if evidence:
            body["evidence"] = {"content_type": "image/png", "data": base64.b64encode(png()).decode()}
        return (await self.json("POST", f"/v1/patients/{patient_id}/consents", status=201, json=body))["id"]

    async def release(self, media_id: str) -> str:
        body = {"purpose": "education", "recipient": "Journal of Skin"}
        return (await self.json("POST", f"/v1/media/{media_id}/releases", role="marketing", status=201, json=body))["id"]

    async def export(self, patient_id: str) -> str:
        return (await self.json("POST", f"/v1/patients/{patient_id}/exports", status=202))["id"]


async def job_states(rt, kind: str, payload_contains: str) -> list[str]:
    async with rt.db.session() as session:
        rows = await session.execute(select(Job.state).where(Job.kind == kind, Job.payload.contains(payload_contains)))
        return list(rows.scalars())


__all__ = ["DONE", "Api", "drain", "jpeg", "job_states", "png"]
