"""A STOW-RS that fails is retried, then the export reports ``failed`` (and it is
audited); the PACS address goes through the webhooks' SSRF guard; requests are checked
for tenant, kind and state like every other path."""

from __future__ import annotations

import pytest

from tests.dicom.support import audit_actions, request_export, run_export, upload
from tests.dicom.test_export import baseline_jpeg, patient_and_treatment
from tests.lifecycle.support import Api, job_states
from tests.pipeline.videos import make_video
from vault.dicom.service import SEND_DICOM
from vault.jobs.models import DEAD
from workers.jobs import load

ATTEMPTS = load().get(SEND_DICOM).max_attempts


async def _failed_export(api: Api) -> tuple[str, dict]:
    pid, _, _ = await patient_and_treatment(api)
    media = await upload(api, pid, baseline_jpeg(), "image/jpeg")
    status = await run_export(api, (await request_export(api, media["id"]))["id"])
    assert status["status"] == "failed" and status["attempts"] == ATTEMPTS, status
    assert await job_states(api.rt, SEND_DICOM, status["id"]) == [DEAD]
    assert ("dicom_export.send", "failed") in await audit_actions(api, media["id"])
    assert status["sent_at"] is None and status["sop_instance_uid"] is None
    return media["id"], status


async def test_a_stopped_pacs_is_retried_then_reported(api: Api, orthanc):
    orthanc.stop()
    _, status = await _failed_export(api)
    assert status["error"] == "unreachable"
    orthanc.start()  # back: the next export goes through
    pid, _, _ = await patient_and_treatment(api)
    media = await upload(api, pid, baseline_jpeg(seed=5), "image/jpeg")
    sent = await run_export(api, (await request_export(api, media["id"]))["id"])
    assert sent["status"] == "sent" and orthanc.instance_file(sent["sop_instance_uid"])


@pytest.mark.parametrize("dicom_overrides", [{"dicomweb_password": "not-the-password"}], indirect=True)
async def test_a_refusing_pacs_is_retried_then_reported(api: Api, orthanc):
    _, status = await _failed_export(api)
    assert status["error"] == "http_401"
    assert orthanc.instance_count() == 0


@pytest.mark.parametrize("dicom_overrides", [{"dicomweb_url": lambda o: o.dicomweb_url + "/no-such-root"}],
                         indirect=True)
async def test_a_pacs_answering_404_is_retried_then_reported(api: Api, orthanc):
    _, status = await _failed_export(api)
    assert status["error"] == "http_404"


@pytest.mark.parametrize("dicom_overrides", [{"dicomweb_url": lambda o: o.dicomweb_url.replace("http:", "https:"),
                                              "dicomweb_allow_http_loopback": False}], indirect=True)
async def test_a_loopback_pacs_is_refused_unless_allow_listed(api: Api, orthanc):
    _, status = await _failed_export(api)
    assert status["error"] == "refused_loopback_address"
    assert orthanc.instance_count() == 0


async def test_requests_are_checked_like_every_path(api: Api, other_clinic, client, orthanc):
    other = Api(client, other_clinic)
    pid, _, _ = await patient_and_treatment(api)
    media = await upload(api, pid, baseline_jpeg(), "image/jpeg")
    # another tenant's media and export: 404, nothing queued
    await other.call("POST", f"/v1/media/{media['id']}/dicom-exports", role="practitioner", status=404)
    started = await request_export(api, media["id"])
    await other.call("GET", f"/v1/dicom-exports/{started['id']}", role="dpo", status=404)
    # roles outside the table: 403 before anything else
    for role in ("records", "marketing", "admin", "auditor", "erasure"):
        await api.call("POST", f"/v1/media/{media['id']}/dicom-exports", role=role, status=403)
        await api.call("GET", f"/v1/dicom-exports/{started['id']}", role=role, status=403)
    await api.call("POST", f"/v1/media/{'0' * 32}/dicom-exports", status=404)
    # a video (processing, and never a DICOM photo): 409
    video = await upload(api, pid, make_video(seconds=0.5, audio=False), "video/quicktime")
    _, body = await api.call("POST", f"/v1/media/{video['id']}/dicom-exports", status=409)
    assert b"only photos" in body
    # a restricted patient: refused
    await api.call("PUT", f"/v1/patients/{pid}/restriction", status=200)
    resp, body = await api.call("POST", f"/v1/media/{media['id']}/dicom-exports", status=409)
    assert b"restricted" in body
    await api.call("DELETE", f"/v1/patients/{pid}/restriction", status=200)
    # a deleted photo: 410, and the export queued before the deletion fails without sending
    await api.call("DELETE", f"/v1/media/{media['id']}", status=200)
    await api.call("POST", f"/v1/media/{media['id']}/dicom-exports", status=410)
    status = await run_export(api, started["id"])
    assert status["status"] == "failed" and status["error"] == "media_deleted" and status["attempts"] == 0
    assert orthanc.instance_count() == 0
    # an erased patient's export: 410
    await api.call("POST", f"/v1/patients/{pid}/erasure", json={"reason": "asked"}, status=200)
    await api.call("GET", f"/v1/dicom-exports/{started['id']}", status=410)


@pytest.mark.parametrize("dicom_overrides", [{"dicomweb_url": None}], indirect=True)
async def test_without_a_configured_pacs_the_request_is_refused(api: Api, orthanc):
    pid, _, _ = await patient_and_treatment(api)
    media = await upload(api, pid, baseline_jpeg(), "image/jpeg")
    _, body = await api.call("POST", f"/v1/media/{media['id']}/dicom-exports", status=409)
    assert b"VAULT_DICOMWEB_URL" in body
