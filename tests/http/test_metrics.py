"""/metrics: behind the metrics token, and filled — after a short mixed load every family
the operations docs promise has samples, and the latency histogram counted every request."""

from __future__ import annotations

import io
import secrets

from tests.pipeline.samples import small_jpeg
from tests.support.metrics import METRICS_AUTH, METRICS_TOKEN, families, referenced_metrics
from vault.appkeys import RUNTIME
from vault.jobs.models import DEAD, Job
from vault.jobs.queue import enqueue

# Every family the dashboard, the alert rules and docs/operations.md rely on.
EXPECTED = {
    "vault_http_requests", "vault_http_request_seconds", "vault_http_requests_in_flight",
    "vault_upload_bytes", "vault_upload_refusals", "vault_ready_check",
    "vault_pipeline_stage_seconds", "vault_root_key_call_seconds",
    "vault_audit_append_seconds", "vault_audit_commit_entries",
    "vault_jobs_queued", "vault_jobs_running", "vault_jobs_dead", "vault_jobs_oldest_queued_seconds",
    "vault_workers_live", "vault_kek_epoch_age_seconds", "vault_kek_rotation_period_seconds",
    "vault_audit_checkpoint_age_seconds", "vault_key_cache_hits", "vault_key_cache_misses",
    "vault_face_detector_info", "vault_metrics_refresh_ok",
}


async def test_metrics_need_the_token(client):
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer " + "x" * len(METRICS_TOKEN)})
    assert wrong.status == 401 and (await wrong.json())["error"] == "unauthorized"
    assert (await client.get("/metrics", headers=METRICS_AUTH)).status == 200


async def test_metrics_do_not_exist_without_a_token(settings, aiohttp_client):
    from tests.conftest import VaultTestServer
    from vault.app import create_app

    client = await aiohttp_client(VaultTestServer(create_app(settings.replace(metrics_token=None))))
    resp = await client.get("/metrics", headers=METRICS_AUTH)
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_every_family_is_filled_after_a_mixed_load(client, clinic):
    db = client.server.app[RUNTIME].db
    kind = "test.metrics-" + secrets.token_hex(3)
    async with db.transaction() as session:  # a queued job and a dead one, of a kind no worker runs
        await enqueue(session, kind, {})
        dead_id = await enqueue(session, kind, {})
    async with db.transaction() as session:
        (await session.get(Job, dead_id)).state = DEAD

    requests = 0

    async def call(method: str, path: str, **kwargs):
        nonlocal requests
        requests += 1
        resp = await client.request(method, path, **kwargs)
        await resp.read()
        return resp

    practitioner, dpo = clinic.auth("practitioner"), clinic.auth("dpo")
    resp = await call("POST", "/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(4)}, headers=practitioner)
    pid = (await resp.json())["id"]
    photo = small_jpeg("metrics", size=(640, 480))
    resp = await call("POST", f"/v1/patients/{pid}/media", data=io.BytesIO(photo),
                      headers={**practitioner, "Content-Type": "image/jpeg"})
    assert resp.status == 201
    media_id = (await resp.json())["id"]
    refused = await call("POST", f"/v1/patients/{pid}/media", data=b"not an image at all",
                         headers={**practitioner, "Content-Type": "image/jpeg"})
    assert refused.status in (415, 422)
    refusal = (await refused.json())["error"]
    for _ in range(2):  # the second read hits the key cache
        assert (await call("GET", f"/v1/media/{media_id}/thumbnail", params={"size": "256"}, headers=dpo)).status == 200
    assert (await call("GET", f"/v1/media/{media_id}/content", headers={**dpo, "Range": "bytes=0-99"})).status == 206
    assert (await call("GET", f"/v1/patients/{pid}", headers=clinic.auth("marketing"))).status == 403
    assert (await call("GET", "/v1/nothing-here")).status == 404
    assert (await call("GET", "/readyz")).status == 200

    text = await (await client.get("/metrics", headers=METRICS_AUTH)).text()
    found = families(text)
    empty = sorted(name for name in EXPECTED if not found.get(name))
    assert not empty, f"families without samples: {empty}"

    series = {sample.name for samples in found.values() for sample in samples}
    missing = sorted(referenced_metrics() - series)
    assert not missing, f"deploy/ rules or dashboard query series /metrics does not serve: {missing}"

    latency = [s for s in found["vault_http_request_seconds"] if s.name == "vault_http_request_seconds_count"]
    assert sum(s.value for s in latency) == requests
    by_class = {(s.labels["route"], s.labels["status_class"]): s.value for s in latency}
    assert by_class[("/v1/media/{media_id}/thumbnail", "2xx")] == 2
    assert by_class[("/v1/patients/{patient_id}", "4xx")] == 1
    assert by_class[("<unmatched>", "4xx")] == 1
    assert not any(media_id in line or pid in line for line in text.splitlines())  # templates, never ids

    refusals = {s.labels["reason"]: s.value for s in found["vault_upload_refusals"]}
    assert refusals == {refusal: 1}
    uploaded = {s.labels["outcome"]: s.value for s in found["vault_upload_bytes"] if s.name.endswith("_total")}
    assert uploaded["stored"] == len(photo) and uploaded["refused"] == len(b"not an image at all")

    def value(name: str, **labels) -> float:
        return next(s.value for s in found[name] if all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("vault_jobs_queued", kind=kind) == 1 and value("vault_jobs_dead", kind=kind) == 1
    assert value("vault_jobs_oldest_queued_seconds", kind=kind) >= 0
    assert value("vault_kek_epoch_age_seconds", tenant=clinic.slug) >= 0
    assert value("vault_key_cache_hits") >= 1 and value("vault_key_cache_misses") >= 1
    assert value("vault_metrics_refresh_ok") == 1
    stages = {s.labels["stage"] for s in found["vault_pipeline_stage_seconds"]}
    assert {"photo.decode", "seal"} <= stages
    assert value("vault_http_requests_in_flight") == 1  # the scrape itself
