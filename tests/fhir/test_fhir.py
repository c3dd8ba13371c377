"""FHIR R4 read-only adapter (docs/fhir.md): every resource validates against the R4B
models of fhir.resources (Media, Patient, Binary, Bundle, CapabilityStatement and
OperationOutcome are as in R4 for what we send); the same tokens, roles, tenant checks
and audit as /v1; the MRN never in a URL; Binary is the exact bytes of /v1 content."""

from __future__ import annotations

import io
import secrets

import pytest
from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from PIL import Image

from vault.fhir.responses import IDENTIFIER_SYSTEM
from vault.fhir.views import BINARY_JSON_LIMIT

FHIR = "application/fhir+json"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _jpeg(size=(640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


async def _patient(client, clinic, **fields) -> tuple[str, str]:
    mrn = "MRN-" + secrets.token_hex(6)
    resp = await client.post("/v1/patients", json={"external_ref": mrn, **fields}, headers=clinic.auth("practitioner"))
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"], mrn


async def _upload(client, clinic, patient_id: str, data: bytes | None = None) -> str:
    resp = await client.post(f"/v1/patients/{patient_id}/media?phase=before", data=io.BytesIO(data or _jpeg()),
                             headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


class Recorder:
    """Every URL (path and query) the client asked for, to show no MRN went into one."""

    def __init__(self, client) -> None:
        self.client = client
        self.urls: list[str] = []

    async def request(self, method: str, url: str, **kwargs):
        self.urls.append(url)
        return await self.client.request(method, url, **kwargs)


async def _outcome(resp, status: int) -> OperationOutcome:
    assert resp.status == status, await resp.text()
    assert resp.content_type == FHIR
    return OperationOutcome.model_validate(await resp.json())


async def test_metadata_is_a_capability_statement_without_a_token(client):
    resp = await client.get("/fhir/R4/metadata")
    assert resp.status == 200
    assert resp.content_type == FHIR
    statement = CapabilityStatement.model_validate(await resp.json())
    assert statement.fhirVersion == "4.0.1"
    types = {r.type for r in statement.rest[0].resource}
    assert types == {"Media", "Patient", "Binary"}


async def test_search_by_identifier_in_the_form_body_then_read_everything(client, clinic):
    http = Recorder(client)
    patient_id, mrn = await _patient(client, clinic, display_name="Ada Example", date_of_birth="1980-02-03")
    media_ids = {await _upload(client, clinic, patient_id) for _ in range(2)}
    records = clinic.auth("records")

    resp = await http.request("POST", "/fhir/R4/Media/_search", data=f"subject:Patient.identifier={IDENTIFIER_SYSTEM}|{mrn}",
                              headers={**records, **FORM})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == FHIR
    bundle = Bundle.model_validate(await resp.json())
    assert bundle.type == "searchset"
    found = {e.resource.id for e in bundle.entry}
    assert found == media_ids
    for entry in bundle.entry:
        media = Media.model_validate(entry.resource.model_dump())
        assert media.subject.reference == f"Patient/{patient_id}"
        assert media.content.url == f"Binary/{media.id}"
    # the value alone (any system) matches too
    resp = await http.request("POST", "/fhir/R4/Media/_search", data={"subject:Patient.identifier": mrn},
                              headers=records)
    assert {e["resource"]["id"] for e in (await resp.json())["entry"]} == media_ids

    # follow what the bundle links to: Media, Patient, Binary, thumbnails, the self link
    media_id = sorted(media_ids)[0]
    resp = await http.request("GET", f"/fhir/R4/Media/{media_id}", headers=records)
    media = Media.model_validate(await resp.json())
    assert media.status == "completed" and media.width == 640 and media.height == 480
    thumbs = [e.valueAttachment.url for e in media.extension if e.url.endswith("media-thumbnail")]
    assert len(thumbs) == 2
    for url in thumbs:
        resp = await http.request("GET", url, headers=records)
        assert resp.status == 200 and resp.content_type == "image/jpeg"
    resp = await http.request("GET", f"/fhir/R4/{media.subject.reference}", headers=records)
    assert resp.status == 200
    patient = Patient.model_validate(await resp.json())
    assert patient.identifier[0].value == mrn and patient.identifier[0].system == IDENTIFIER_SYSTEM
    assert patient.name[0].text == "Ada Example" and str(patient.birthDate) == "1980-02-03"
    resp = await http.request("GET", f"/fhir/R4/{media.content.url}", headers=records)
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    assert len(await resp.read()) == media.content.size
    resp = await http.request("GET", "/fhir/R4/" + bundle.link[0].url, headers=records)
    assert {e["resource"]["id"] for e in (await resp.json())["entry"]} == media_ids

    assert http.urls and not any(mrn in url for url in http.urls)


async def test_search_by_patient_id_pages_by_cursor(client, clinic):
    patient_id, _ = await _patient(client, clinic)
    media_ids = {await _upload(client, clinic, patient_id) for _ in range(3)}
    seen: list[str] = []
    url: str | None = f"/fhir/R4/Media?patient={patient_id}&_count=2"
    while url:
        resp = await client.get(url, headers=clinic.auth("practitioner"))
        assert resp.status == 200, await resp.text()
        bundle = Bundle.model_validate(await resp.json())
        seen += [e.resource.id for e in bundle.entry or []]
        nxt = [link.url for link in bundle.link if link.relation == "next"]
        url = "/fhir/R4/" + nxt[0] if nxt else None
    assert sorted(seen) == sorted(media_ids)


async def test_unknown_identifier_is_an_empty_bundle(client, clinic):
    resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": "no-such-" + secrets.token_hex(4)},
                             headers=clinic.auth("records"))
    bundle = Bundle.model_validate(await resp.json())
    assert resp.status == 200 and not bundle.entry


async def test_binary_is_the_exact_bytes_of_v1_content_with_range(client, clinic):
    patient_id, _ = await _patient(client, clinic)
    media_id = await _upload(client, clinic, patient_id, _jpeg((900, 700)))
    auth = clinic.auth("records")
    v1 = await (await client.get(f"/v1/media/{media_id}/content", headers=auth)).read()
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers=auth)
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == v1
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "Range": "bytes=100-4195"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 100-4195/{len(v1)}"
    assert await resp.read() == v1[100:4196]
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "Range": "bytes=-10"})
    assert resp.status == 206 and await resp.read() == v1[-10:]
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "Range": f"bytes={len(v1)}-"})
    await _outcome(resp, 416)
    # as a FHIR Binary resource (base64) only while small
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "Accept": FHIR})
    assert resp.status == 200, await resp.text()
    binary = Binary.model_validate(await resp.json())
    assert binary.contentType == "image/jpeg" and binary.data == v1


async def test_binary_answers_304_to_its_tag_audited_like_v1(client, clinic, other_clinic):
    """If-None-Match on Binary: the same answer as /v1 content (one shared code path):
    304 with ``private, no-cache`` and the tag, after the tenant check, audited as
    ``media.content`` with outcome ``not_modified``; a tag of something else gets the bytes."""
    patient_id, _ = await _patient(client, clinic)
    media_id = await _upload(client, clinic, patient_id)
    auth = clinic.auth("records")
    v1 = await client.get(f"/v1/media/{media_id}/content", headers=auth)
    fhir = await client.get(f"/fhir/R4/Binary/{media_id}", headers=auth)
    etag = fhir.headers["ETag"]
    assert etag == v1.headers["ETag"]
    assert fhir.headers["Cache-Control"] == v1.headers["Cache-Control"] == "private, no-cache"
    request_id = "fhir-304-" + secrets.token_hex(6)
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "If-None-Match": etag,
                                                                   "X-Request-ID": request_id})
    assert resp.status == 304 and await resp.read() == b""
    assert resp.headers["ETag"] == etag and resp.headers["Cache-Control"] == "private, no-cache"
    audit = await client.get("/v1/audit?action=media.content&limit=200", headers=clinic.auth("dpo"))
    entries = [e for e in (await audit.json())["items"] if e["request_id"] == request_id]
    assert [(e["outcome"], e["targets"]["media_id"]) for e in entries] == [("not_modified", media_id)]
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "If-None-Match": '"someone-else"'})
    assert resp.status == 200 and await resp.read() == await v1.read()
    # the FHIR JSON form is another representation: the raw bytes' tag does not stand for it
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "If-None-Match": etag, "Accept": FHIR})
    assert resp.status == 200 and Binary.model_validate(await resp.json()).id == media_id
    # another tenant holding the right tag still gets 404, never a 304
    stranger = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**other_clinic.auth("records"), "If-None-Match": etag})
    await _outcome(stranger, 404)


async def test_large_binary_as_fhir_json_is_406(client, clinic):
    patient_id, _ = await _patient(client, clinic)
    data = _jpeg((1000, 1000))
    side = 1000
    while len(data) <= BINARY_JSON_LIMIT:
        side += 600
        data = _jpeg((side, side))
    media_id = await _upload(client, clinic, patient_id, data)
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**clinic.auth("records"), "Accept": FHIR})
    outcome = await _outcome(resp, 406)
    assert outcome.issue[0].code == "not-supported"


async def test_reads_are_audited_like_v1(client, clinic):
    patient_id, mrn = await _patient(client, clinic)
    media_id = await _upload(client, clinic, patient_id)
    auth = clinic.auth("records")
    calls = {
        "media.read": ("GET", f"/fhir/R4/Media/{media_id}", {}),
        "media.content": ("GET", f"/fhir/R4/Binary/{media_id}", {}),
        "patient.read": ("GET", f"/fhir/R4/Patient/{patient_id}", {}),
        "media.list": ("GET", f"/fhir/R4/Media?patient={patient_id}", {}),
        "patient.find": ("POST", "/fhir/R4/Media/_search", {"data": {"subject:Patient.identifier": mrn}}),
    }
    for action, (method, url, kwargs) in calls.items():
        request_id = "fhir-audit-" + secrets.token_hex(6)
        resp = await client.request(method, url, headers={**auth, "X-Request-ID": request_id}, **kwargs)
        assert resp.status == 200, await resp.text()
        await resp.read()
        audit = await client.get(f"/v1/audit?action={action}&limit=200", headers=clinic.auth("dpo"))
        entries = [e for e in (await audit.json())["items"] if e["request_id"] == request_id]
        assert len(entries) == 1, (action, entries)
        assert entries[0]["role"] == "records"
        assert entries[0]["targets"].get("patient_id") == patient_id


async def test_other_tenant_is_404_and_marketing_is_403(client, clinic, other_clinic):
    patient_id, mrn = await _patient(client, clinic)
    media_id = await _upload(client, clinic, patient_id)
    reads = [f"/fhir/R4/Media/{media_id}", f"/fhir/R4/Binary/{media_id}", f"/fhir/R4/Patient/{patient_id}",
             f"/fhir/R4/Media?patient={patient_id}"]
    for url in reads:
        await _outcome(await client.get(url, headers=other_clinic.auth("records")), 404)
        outcome = await _outcome(await client.get(url, headers=clinic.auth("marketing")), 403)
        assert outcome.issue[0].code == "forbidden"
        await _outcome(await client.get(url), 401)
    # the identifier of another clinic's patient finds nothing
    resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": mrn},
                             headers=other_clinic.auth("records"))
    assert resp.status == 200 and not (await resp.json()).get("entry")
    resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": mrn},
                             headers=clinic.auth("marketing"))
    await _outcome(resp, 403)


@pytest.mark.parametrize(
    "method,url,kwargs,status",
    [
        ("GET", "/fhir/R4/Media", {}, 400),
        ("GET", "/fhir/R4/Media?patient=nope", {}, 400),
        ("GET", "/fhir/R4/Media?patient={p}&_count=0", {}, 400),
        ("GET", "/fhir/R4/Media?patient={p}&_count=abc", {}, 400),
        ("GET", "/fhir/R4/Media?patient={p}&_cursor=zz", {}, 400),
        ("GET", "/fhir/R4/Media?patient={p}&date=2020", {}, 400),
        ("GET", "/fhir/R4/Media?patient={p}&patient={p}", {}, 400),
        ("GET", "/fhir/R4/Media?subject:Patient.identifier=MRN-1", {}, 400),
        ("GET", "/fhir/R4/Media?patient=" + "0" * 32, {}, 404),
        ("GET", "/fhir/R4/Media/not-an-id", {}, 404),
        ("GET", "/fhir/R4/Media/" + "0" * 32, {}, 404),
        ("GET", "/fhir/R4/Binary/..%2F..%2Fetc", {}, 404),
        ("GET", "/fhir/R4/Patient/" + "f" * 32, {}, 404),
        ("GET", "/fhir/R4/Patient/{p}?_format=xml", {}, 400),
        ("GET", "/fhir/R4/Patient/{p}", {"headers": {"Accept": "application/fhir+xml"}}, 406),
        ("GET", "/fhir/R4/Observation/" + "0" * 32, {}, 404),
        ("POST", "/fhir/R4/Media/_search", {"data": b"\xff\xfe=\x00"}, 400),
        ("POST", "/fhir/R4/Media/_search", {"data": "no equals sign&&"}, 400),
        ("POST", "/fhir/R4/Media/_search", {"data": {"subject:Patient.identifier": "http://other|MRN-1"}}, 400),
        ("POST", "/fhir/R4/Media/_search", {"data": {"subject:Patient.identifier": "|"}}, 400),
        ("POST", "/fhir/R4/Media/_search", {"data": {"name": "Ada"}}, 400),
        ("POST", "/fhir/R4/Media/_search", {"data": {}}, 400),
        ("POST", "/fhir/R4/Media/_search", {"json": {"subject:Patient.identifier": "MRN-1"}}, 415),
        ("POST", "/fhir/R4/Media/_search", {"data": "a=" + "x" * 20000}, 413),
        ("POST", "/fhir/R4/Media/_search?patient={p}", {"data": {}}, 400),
        ("DELETE", "/fhir/R4/Media/" + "0" * 32, {}, 405),
    ],
)
async def test_bad_input_is_a_4xx_operation_outcome(client, clinic, method, url, kwargs, status):
    patient_id, _ = await _patient(client, clinic)
    kwargs = dict(kwargs)
    headers = {**clinic.auth("records"), **kwargs.pop("headers", {})}
    if isinstance(kwargs.get("data"), (str, bytes)):
        headers.update(FORM)
    resp = await client.request(method, url.format(p=patient_id), headers=headers, **kwargs)
    outcome = await _outcome(resp, status)
    assert outcome.issue[0].severity == "error"


async def test_logs_never_carry_the_mrn_or_names(client, clinic, caplog):
    import logging

    from vault.logs import JsonFormatter

    patient_id, mrn = await _patient(client, clinic, display_name="Hilda Secret")
    with caplog.at_level(logging.INFO):
        resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": mrn}, headers=clinic.auth("records"))
        assert resp.status == 200
        resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": "http://x|" + mrn},
                                 headers=clinic.auth("records"))
        assert mrn not in await resp.text()
        await client.get(f"/fhir/R4/Patient/{patient_id}", headers=clinic.auth("records"))
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert '"route": "/fhir/R4/Media/_search"' in text
    for secret in (mrn, "Hilda Secret", clinic.tokens["records"], patient_id):
        assert secret not in text


async def test_unexpected_errors_are_a_generic_500_outcome(client, clinic, monkeypatch):
    from vault.fhir.views import FHIR

    async def boom(*a, **k):
        raise RuntimeError("secret detail Ada Lovelace")

    monkeypatch.setattr(client.server.app[FHIR], "read_media", boom)
    resp = await client.get("/fhir/R4/Media/" + "0" * 32, headers=clinic.auth("records"))
    outcome = await _outcome(resp, 500)
    assert outcome.issue[0].severity == "fatal" and "Ada" not in await resp.text()


async def test_deleted_media_and_erased_patients_are_410_deleted(client, clinic):
    patient_id, mrn = await _patient(client, clinic)
    kept, deleted = await _upload(client, clinic, patient_id), await _upload(client, clinic, patient_id)
    resp = await client.delete(f"/v1/media/{deleted}", headers=clinic.auth("dpo"))
    assert resp.status in (200, 204), await resp.text()
    auth = clinic.auth("records")
    for url in (f"/fhir/R4/Media/{deleted}", f"/fhir/R4/Binary/{deleted}"):
        outcome = await _outcome(await client.get(url, headers=auth), 410)
        assert outcome.issue[0].code == "deleted"
    resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": mrn}, headers=auth)
    assert [e["resource"]["id"] for e in (await resp.json())["entry"]] == [kept]
    # HEAD on Binary: the headers of the read, no body
    resp = await client.head(f"/fhir/R4/Binary/{kept}", headers=auth)
    assert resp.status == 200 and int(resp.headers["Content-Length"]) > 0 and await resp.read() == b""

    resp = await client.post(f"/v1/patients/{patient_id}/erasure", json={"reason": "asked"}, headers=clinic.auth("dpo"))
    assert resp.status == 200, await resp.text()
    for url in (f"/fhir/R4/Patient/{patient_id}", f"/fhir/R4/Media/{kept}", f"/fhir/R4/Binary/{kept}",
                f"/fhir/R4/Media?patient={patient_id}"):
        await _outcome(await client.get(url, headers=auth), 410)
    resp = await client.post("/fhir/R4/Media/_search", data={"subject:Patient.identifier": mrn}, headers=auth)
    assert resp.status == 200 and not (await resp.json()).get("entry")


async def test_video_media_processing_then_ready_never_base64(client, clinic):
    from tests.pipeline.videos import make_video
    from tests.support.jobs import drain
    from vault.appkeys import RUNTIME

    patient_id, _ = await _patient(client, clinic)
    resp = await client.post(f"/v1/patients/{patient_id}/media", data=io.BytesIO(make_video(seconds=1)),
                             headers={**clinic.auth("practitioner"), "Content-Type": "video/quicktime"})
    assert resp.status == 201, await resp.text()
    media_id = (await resp.json())["id"]
    auth = clinic.auth("records")
    media = Media.model_validate(await (await client.get(f"/fhir/R4/Media/{media_id}", headers=auth)).json())
    assert media.status == "in-progress" and media.type.coding[0].code == "video"
    await _outcome(await client.get(f"/fhir/R4/Binary/{media_id}", headers=auth), 409)

    await drain(client.server.app[RUNTIME], "media.finish_video", "media.shred_blob", timeout=120, due_only=True)
    media = Media.model_validate(await (await client.get(f"/fhir/R4/Media/{media_id}", headers=auth)).json())
    assert media.status == "completed" and media.content.contentType == "video/mp4"
    assert media.content.size < BINARY_JSON_LIMIT  # small, and still never base64'd into JSON
    await _outcome(await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "Accept": FHIR}), 406)
    v1 = await (await client.get(f"/v1/media/{media_id}/content", headers=auth)).read()
    resp = await client.get(f"/fhir/R4/Binary/{media_id}", headers={**auth, "Range": "bytes=0-99"})
    assert resp.status == 206 and resp.content_type == "video/mp4" and await resp.read() == v1[:100]
