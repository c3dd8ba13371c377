"""Dead jobs run their kind's dead path: a video whose finishing job's worker is lost on
the last attempt becomes ``failed`` with its original shredded; an export whose build
job dies says ``failed``; a webhook delivery whose job dies says ``failed``. And
``lifecycle.reconcile`` repairs items a crash left stuck with no live job."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from keys.errors import KeyDestroyed
from tests.lifecycle.support import Api, drain
from tests.media.test_videos import new_patient, upload
from tests.pipeline.videos import make_video
from vault.db import utcnow
from vault.jobs import enqueue
from vault.jobs.models import DEAD, RUNNING, Job
from vault.lifecycle.exports import BUILD_EXPORT
from vault.lifecycle.models import Export
from vault.media.models import FAILED, Media, MediaBlob
from vault.media.video import FINISH_JOB, SHRED_JOB
from workers.jobs import load
from workers.registry import NothingToUndo


def test_every_kind_declares_its_dead_path():
    registry = load()
    for kind in registry.kinds:
        on_dead = registry.get(kind).on_dead
        assert isinstance(on_dead, NothingToUndo) or callable(on_dead), kind
    assert not isinstance(registry.get(FINISH_JOB).on_dead, NothingToUndo)
    assert not isinstance(registry.get(BUILD_EXPORT).on_dead, NothingToUndo)
    assert not isinstance(registry.get("webhooks.deliver").on_dead, NothingToUndo)


async def _lose_worker_on_last_attempt(rt, kind: str, payload_part: str) -> None:
    """What a kill -9 of the worker on the job's last attempt leaves: running, attempts
    used up, lease expired."""
    spec = load().get(kind)
    async with rt.db.transaction() as s:
        await s.execute(update(Job).where(Job.kind == kind, Job.payload.contains(payload_part)).values(
            state=RUNNING, attempts=spec.max_attempts, lease_until=utcnow() - timedelta(seconds=1)))


async def _source(rt, media_id):
    async with rt.db.session() as s:
        return (await s.execute(select(MediaBlob).where(MediaBlob.media_id == media_id))).scalar_one()


async def test_a_video_whose_worker_is_lost_on_the_last_attempt_fails_and_its_original_is_shredded(client, clinic):
    pid = await new_patient(client, clinic)
    media = await (await upload(client, clinic, pid, make_video(seconds=1))).json()
    api = Api(client, clinic)
    source = await _source(api.rt, media["id"])
    await _lose_worker_on_last_attempt(api.rt, FINISH_JOB, media["id"])

    await drain(api.rt, FINISH_JOB, SHRED_JOB)
    # The dead path commits just after the job is marked dead: drain once more for the
    # shred job it enqueues, in case the first drain ended in between.
    await drain(api.rt, SHRED_JOB)

    async with api.rt.db.session() as s:
        job = (await s.execute(select(Job).where(Job.kind == FINISH_JOB, Job.payload.contains(media["id"])))).scalar_one()
        row = await s.get(Media, media["id"])
        assert (await s.execute(select(MediaBlob).where(MediaBlob.media_id == media["id"]))).first() is None
    assert job.state == DEAD and job.last_error.startswith("WorkerLost")
    assert row.status == FAILED and row.failure_reason
    try:
        await api.rt.keys.object_key(source.tenant_id, source.patient_id, source.id)
        raise AssertionError("the original's key survived")
    except KeyDestroyed:
        pass
    assert not await api.rt.store.exists(source.id)
    view = await api.json("GET", f"/v1/media/{media['id']}", role="records")
    assert view["status"] == "failed"


async def test_reconcile_repairs_a_video_stuck_processing_with_no_live_job(client, clinic):
    pid = await new_patient(client, clinic)
    media = await (await upload(client, clinic, pid, make_video(seconds=1))).json()
    api = Api(client, clinic)
    source = await _source(api.rt, media["id"])
    # A crash between "dead" and the dead path: the job is dead, the video processing.
    async with api.rt.db.transaction() as s:
        await s.execute(update(Job).where(Job.kind == FINISH_JOB, Job.payload.contains(media["id"]))
                        .values(state=DEAD, last_error="WorkerLost: x"))
        await enqueue(s, "lifecycle.reconcile", {"period_start": "test"})
    await drain(api.rt, "lifecycle.reconcile", SHRED_JOB)
    async with api.rt.db.session() as s:
        assert (await s.get(Media, media["id"])).status == FAILED
    assert not await api.rt.store.exists(source.id)
    # Idempotent: a second repair changes nothing.
    async with api.rt.db.transaction() as s:
        await enqueue(s, "lifecycle.reconcile", {"period_start": "test-2"})
    await drain(api.rt, "lifecycle.reconcile", SHRED_JOB)
    async with api.rt.db.session() as s:
        assert (await s.get(Media, media["id"])).status == FAILED


async def test_an_export_whose_job_dies_says_failed(client, clinic):
    api = Api(client, clinic)
    pid = await api.patient()
    export_id = await api.export(pid)
    await _lose_worker_on_last_attempt(api.rt, BUILD_EXPORT, export_id)
    await drain(api.rt, BUILD_EXPORT)
    async with api.rt.db.session() as s:
        export = await s.get(Export, export_id)
    assert export.status == "failed" and export.error == "WorkerLost" and export.blob_id is None
    assert (await api.json("GET", f"/v1/exports/{export_id}"))["status"] == "failed"


async def test_reconcile_fails_an_export_stuck_with_no_live_job(client, clinic):
    api = Api(client, clinic)
    pid = await api.patient()
    export_id = await api.export(pid)
    async with api.rt.db.transaction() as s:
        await s.execute(update(Job).where(Job.kind == BUILD_EXPORT, Job.payload.contains(export_id)).values(state=DEAD))
        await s.execute(update(Export).where(Export.id == export_id).values(status="running"))
        await enqueue(s, "lifecycle.reconcile", {"period_start": "test"})
    await drain(api.rt, "lifecycle.reconcile")
    async with api.rt.db.session() as s:
        assert (await s.get(Export, export_id)).status == "failed"
