"""Consent and release test helpers: patients, photos (one with a face), consents, releases."""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import pytest
from PIL import Image
from sqlalchemy import update

from tests.pipeline import samples
from tests.support.jobs import drain
from tests.pipeline.conftest import exiftool  # noqa: F401  (shared fixture)
from vault.appkeys import RUNTIME
from vault.redaction import handles


def plain_jpeg(color=(120, 90, 60), size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def face_jpeg() -> bytes:
    return samples.astronaut_sideways()


@dataclass
class Api:
    client: object
    clinic: object

    async def patient(self) -> str:
        resp = await self.client.post("/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)},
                                      headers=self.clinic.auth("practitioner"))
        assert resp.status == 201, await resp.text()
        return (await resp.json())["id"]

    async def treatment(self, patient_id: str) -> str:
        resp = await self.client.post(f"/v1/patients/{patient_id}/treatments", json={"name": "Filler", "performed_on": "2026-03-01"},
                                      headers=self.clinic.auth("practitioner"))
        assert resp.status == 201, await resp.text()
        return (await resp.json())["id"]

    async def photo(self, patient_id: str, data: bytes | None = None, *, treatment_id: str | None = None) -> dict:
        params = {"phase": "after", **({"treatment_id": treatment_id} if treatment_id else {})}
        resp = await self.client.post(f"/v1/patients/{patient_id}/media", data=data or plain_jpeg(), params=params,
                                      headers={**self.clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
        assert resp.status == 201, await resp.text()
        # The full-resolution face search runs as a job after the upload answers; until it
        # has, the photo is not releasable de-identified (vault/media/faces.py).
        await drain(self.client.server.app[RUNTIME], "media.search_faces", due_only=True)
        media = await resp.json()
        resp = await self.client.get(f"/v1/media/{media['id']}", headers=self.clinic.auth("practitioner"))
        return await resp.json()

    async def consent(self, patient_id: str, *, status: int = 201, role: str = "dpo", **body) -> dict:
        body.setdefault("purposes", ["education"])
        body.setdefault("identifiable", True)
        resp = await self.client.post(f"/v1/patients/{patient_id}/consents", json=body, headers=self.clinic.auth(role))
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def withdraw(self, consent_id: str, *, status: int = 201, **body) -> dict:
        resp = await self.client.post(f"/v1/consents/{consent_id}/withdraw", json=body or None, headers=self.clinic.auth("dpo"))
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def release(self, media_id: str, *, purpose: str = "education", recipient: str = "Journal of Skin", status: int = 201,
                      role: str = "marketing") -> dict:
        resp = await self.client.post(f"/v1/media/{media_id}/releases", json={"purpose": purpose, "recipient": recipient},
                                      headers=self.clinic.auth(role))
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def releasable(self, purpose: str | None = "education") -> dict[tuple[str, str], dict]:
        """Marketing's listing keyed by (media id, purpose) for identifiable items and by
        (handle, purpose) for de-identified ones."""
        params = {"purpose": purpose} if purpose else {}
        resp = await self.client.get("/v1/releasable", params=params, headers=self.clinic.auth("marketing"))
        assert resp.status == 200, await resp.text()
        return {(i.get("media_id") or i["handle"], i["purpose"]): i for i in (await resp.json())["items"]}

    async def handle(self, media_id: str, purpose: str = "education") -> str:
        """The opaque handle of (media, purpose) (marketing learns it only from the listing)."""
        async with self.client.server.app[RUNTIME].db.session() as session:
            found = await handles.lookup(session, self.clinic.id, media_id, purpose)
        if found is None:
            await handles.ensure(self.client.server.app[RUNTIME].db, self.clinic.id, [purpose])
            async with self.client.server.app[RUNTIME].db.session() as session:
                found = await handles.lookup(session, self.clinic.id, media_id, purpose)
        assert found is not None
        return found

    async def policy(self, deidentified: str) -> None:
        resp = await self.client.put("/v1/release-policy", json={"deidentified": deidentified}, headers=self.clinic.auth("dpo"))
        assert resp.status == 200, await resp.text()

    async def redaction(self, media_id: str, *, role: str = "practitioner") -> dict:
        resp = await self.client.get(f"/v1/media/{media_id}/redaction", headers=self.clinic.auth(role))
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def approve(self, media_id: str, digest: str | None = None, *, status: int = 201, role: str = "practitioner") -> dict:
        digest = digest or (await self.redaction(media_id))["digest"]
        resp = await self.client.post(f"/v1/media/{media_id}/redaction/approve", json={"digest": digest},
                                      headers=self.clinic.auth(role))
        assert resp.status == status, await resp.text()
        return await resp.json()

    async def set(self, model, row_id: str, **values) -> None:
        """Change a row behind the API's back: time passing, or another issue's feature."""
        async with self.client.server.app[RUNTIME].db.transaction() as session:
            await session.execute(update(model).where(model.id == row_id).values(**values))


@pytest.fixture
def api(client, clinic) -> Api:
    return Api(client, clinic)


@pytest.fixture
def other_api(client, other_clinic) -> Api:
    return Api(client, other_clinic)
