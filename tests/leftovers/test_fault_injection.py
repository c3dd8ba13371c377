"""Fault injection with real processes: ``kill -9`` of ``vault serve`` mid-photo-upload,
mid-video-upload, mid-video-finishing, right after an erasure is accepted and
mid-export, and of a ``vault worker`` mid-job four times. After the restart, reconcile
and the leftover sweep's grace (1 s here): every media row is ready and readable or
gone, no blob is without a row, no object key without a blob, no original is left
unshredded, and the audit chain verifies. The counts are printed (``pytest -s``)."""

from __future__ import annotations

import asyncio
from datetime import datetime

import aiohttp
import pytest
from sqlalchemy import func, select

from keys.inventory import object_key_owners, object_keys_page
from tests.leftovers.crashes import Process, stalled_body, until
from tests.lifecycle.support import Api, drain, jpeg
from tests.pipeline.videos import make_video
from vault.audit.checkpoints import Checkpoints
from vault.jobs import enqueue
from vault.jobs.models import Job
from vault.leftovers.models import BlobWrite
from vault.leftovers.references import referenced
from vault.lifecycle.models import Export
from vault.media.models import FAILED, READY, Media, MediaBlob
from vault.media.video import FINISH_JOB, SOURCE
from vault.patients.models import ERASED, Patient
from workers.jobs import load

FAR = datetime(9999, 1, 1).astimezone()


@pytest.fixture
def settings(settings):
    return settings.replace(blob_lease_seconds=1, leftover_grace_seconds=1, job_lease_seconds=2,
                            webhooks_allow_http_loopback=True)


async def inventory(rt, tenant_id: str) -> dict[str, int]:
    """Leftovers of this test's tenant (the database and key store are shared with other
    tests, whose blobs live in other folders)."""
    parts = list(rt.store.root.rglob(".*.part"))
    blobs = [k async for k in rt.store.keys()]
    async with rt.db.session() as s:
        kept = await referenced(s, blobs)
        leases = (await s.execute(select(func.count()).select_from(BlobWrite).where(BlobWrite.tenant_id == tenant_id))).scalar_one()
    keys, after = [], ""
    while page := await object_keys_page(rt.keys, after=after, limit=500, created_before=FAR):
        keys += [r.object_id for r in page if r.tenant_id == tenant_id]
        after = page[-1].object_id
    present = set(blobs)
    return {
        "partial_files": len(parts), "partial_bytes": sum(p.stat().st_size for p in parts),
        "blobs_without_row": len(present - kept), "keys_without_blob": sum(1 for k in keys if k not in present),
        "writer_leases": leases, "blobs": len(present), "object_keys": len(keys),
    }


async def _state(rt, kind: str, part: str) -> tuple[str, int] | None:
    async with rt.db.session() as s:
        row = (await s.execute(select(Job.state, Job.attempts).where(Job.kind == kind, Job.payload.contains(part)))).first()
    return tuple(row) if row else None


async def _post(http, url, **kwargs):
    async with http.post(url, **kwargs) as resp:
        assert resp.status in (200, 201, 202), (resp.status, await resp.text())
        return await resp.json()


async def test_kill_9_at_the_wrong_moments_leaves_nothing_after_reconcile_and_the_sweep(client, clinic, settings, tmp_path):
    api = Api(client, clinic)
    rt = api.rt
    log = tmp_path / "vault.log"
    killed: dict[str, int] = {}
    pract = clinic.auth("practitioner")
    video = make_video(seconds=8, width=640, height=480)
    sources: list[str] = []

    async def video_source(media_id: str) -> str:
        async with rt.db.session() as s:
            return (await s.execute(select(MediaBlob.id).where(MediaBlob.media_id == media_id,
                                                               MediaBlob.rendition == SOURCE))).scalar_one()

    async with aiohttp.ClientSession() as http:
        base = lambda p: server.base + p  # noqa: E731
        # 1. mid-photo-upload
        server = await Process(settings, log, "serve", "--port", "{port}").start()
        pid = (await _post(http, base("/v1/patients"), json={"external_ref": "MRN-fi-1"}, headers=pract))["id"]
        photo = asyncio.create_task(http.post(base(f"/v1/patients/{pid}/media?phase=before"), headers={
            **pract, "Content-Type": "image/jpeg"}, data=stalled_body(jpeg(1, (1200, 900)), send=20_000)))
        await asyncio.sleep(0.5)
        await server.kill()
        killed["mid_photo_upload"] = 1
        await asyncio.gather(photo, return_exceptions=True)

        # 2. mid-video-upload: the source is being encrypted into the store as it arrives
        server = await Process(settings, log, "serve", "--port", "{port}").start()
        upload = asyncio.create_task(http.post(base(f"/v1/patients/{pid}/media?phase=before"), headers={
            **pract, "Content-Type": "video/quicktime"}, data=stalled_body(video, send=len(video) // 2)))
        assert await until(lambda: _has_partial(rt), timeout=30)
        await server.kill()
        killed["mid_video_upload"] = 1
        await asyncio.gather(upload, return_exceptions=True)

        # 3. mid-video-finishing
        server = await Process(settings, log, "serve", "--port", "{port}").start()
        finishing = await _post(http, base(f"/v1/patients/{pid}/media?phase=after"), data=video,
                                headers={**pract, "Content-Type": "video/quicktime"})
        sources.append(await video_source(finishing["id"]))
        running = await until(lambda: _running(rt, FINISH_JOB, finishing["id"]), timeout=30, every=0.005)
        await server.kill()
        killed["mid_video_finishing"] = int(running)

        # 4. right after an erasure is accepted
        server = await Process(settings, log, "serve", "--port", "{port}").start()
        erased = (await _post(http, base("/v1/patients"), json={"external_ref": "MRN-fi-2"}, headers=pract))["id"]
        for seed in range(3):
            await _post(http, base(f"/v1/patients/{erased}/media?phase=before"), data=jpeg(seed),
                        headers={**pract, "Content-Type": "image/jpeg"})
        await _post(http, base(f"/v1/patients/{erased}/erasure"), json={"reason": "asked"}, headers=clinic.auth("erasure"))
        await server.kill()
        killed["after_erasure_accepted"] = 1

        # 5. mid-export (the patient's finished video makes it take a moment)
        server = await Process(settings, log, "serve", "--port", "{port}").start()
        assert await until(lambda: _status(rt, finishing["id"], READY), timeout=300, every=0.1)  # a hang bound
        export = await _post(http, base(f"/v1/patients/{pid}/exports"), headers=clinic.auth("dpo"))
        running = await until(lambda: _export_running(rt, export["id"]), timeout=30, every=0.005)
        await server.kill()
        killed["mid_export"] = int(running)

        # 6. a worker killed mid-job four times: the video's finishing job dies ("WorkerLost")
        server = await Process(settings, log, "serve", "--port", "{port}", VAULT_INPROCESS_JOBS="false").start()
        doomed = await _post(http, base(f"/v1/patients/{pid}/media?phase=progress"), data=video,
                             headers={**pract, "Content-Type": "video/quicktime"})
        sources.append(await video_source(doomed["id"]))
        await server.kill()
        killed["worker_mid_job"] = 0
        for attempt in range(1, 5):
            worker = await Process(settings, log, "worker", "--concurrency", "1").start()
            hit = await until(lambda: _attempt_running(rt, doomed["id"], attempt), timeout=60, every=0.005)
            await worker.kill()
            killed["worker_mid_job"] += int(hit)

    # The restart: the reconcile job, then the sweep after its grace, through the real runner.
    before = await inventory(rt, clinic.id)
    kinds = [k for k in load().kinds if k != "webhooks.deliver"]
    for round_ in range(3):
        await asyncio.sleep(2.2)  # writer leases (1 s) and the grace (1 s) pass
        async with rt.db.transaction() as s:
            await enqueue(s, "lifecycle.reconcile", {"period_start": f"fi-{round_}"})
            await enqueue(s, "storage.sweep_leftovers", {"period_start": f"fi-{round_}"})
        await drain(rt, *kinds, timeout=180)
    after = await inventory(rt, clinic.id)

    # Every media row ready and readable, or gone (failed with its blobs shredded, or erased).
    async with rt.db.session() as s:
        media = (await s.execute(select(Media, Patient.status).join(Patient, Patient.id == Media.patient_id)
                                 .where(Media.tenant_id == clinic.id))).all()
        blob_rows = (await s.execute(select(MediaBlob.media_id, MediaBlob.rendition))).all()
        doomed_job = await _state(rt, FINISH_JOB, doomed["id"])
        export_row = await s.get(Export, export["id"])
    outcome = {"ready": 0, "failed": 0, "erased": 0}
    for m, patient_status in media:
        if patient_status == ERASED:
            outcome["erased"] += 1
            continue
        assert m.status in (READY, FAILED), (m.id, m.status)
        outcome["ready" if m.status == READY else "failed"] += 1
        if m.status == READY:
            resp, body = await api.call("GET", f"/v1/media/{m.id}/content", role="records", status=200)
            assert body
        else:
            assert not [r for r in blob_rows if r.media_id == m.id]
    assert all(rendition != SOURCE for _, rendition in blob_rows)
    for source in sources:  # no original with metadata left: key gone, blob gone
        assert not await rt.store.exists(source)
        assert (await object_key_owners_of(rt, source)) is None
    assert doomed_job == ("dead", 5) and outcome["failed"] >= 1
    assert export_row.status in ("ready", "failed")
    assert after["partial_files"] == 0 and after["blobs_without_row"] == 0 and after["keys_without_blob"] == 0
    assert after["writer_leases"] == 0
    verified = await Checkpoints(rt.db, rt.audit, rt.keys).verify(clinic.id)
    assert verified.ok, (verified.first_bad_seq, verified.reason)
    print(f"\nfault injection: kills {killed} (total {sum(killed.values())})")
    print(f"  before reconcile and sweep: {before}")
    print(f"  after:                      {after}")
    print(f"  media: {outcome}; dead finishing job {doomed_job}; export {export_row.status}; "
          f"audit chain verifies ({verified.checked} entries)")


async def object_key_owners_of(rt, object_id: str):
    return (await object_key_owners(rt.keys, [object_id])).get(object_id)


async def _has_partial(rt) -> bool:
    return any(rt.store.root.rglob(".*.part"))


async def _running(rt, kind: str, part: str) -> bool:
    state = await _state(rt, kind, part)
    return state is not None and state[0] == "running"


async def _attempt_running(rt, media_id: str, attempt: int) -> bool:
    return await _state(rt, FINISH_JOB, media_id) == ("running", attempt)


async def _status(rt, media_id: str, status: str) -> bool:
    async with rt.db.session() as s:
        return (await s.get(Media, media_id)).status == status


async def _export_running(rt, export_id: str) -> bool:
    async with rt.db.session() as s:
        return (await s.execute(select(Export.status).where(Export.id == export_id))).scalar_one() == "running"
