"""Subject-access export: the job builds a ZIP straight into a sealed blob; the ZIP holds
every media file byte-identical to /content, a CSV with one row per media and a JSON
manifest; it downloads once, then it is shredded; unread exports expire."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from datetime import timedelta

from sqlalchemy import update

from tests.lifecycle.support import Api, drain
from vault.db import utcnow
from vault.lifecycle.exports import BUILD_EXPORT
from vault.lifecycle.models import Export


async def test_export_zip_holds_every_file_and_manifests(api: Api):
    pid = await api.patient(display_name="Ada Example", date_of_birth="1980-02-03")
    treatment = await api.treatment(pid)
    media = [await api.photo(pid, seed=i, treatment_id=treatment if i else None) for i in range(3)]
    await api.consent(pid, evidence=True)
    await api.release(media[0])
    await api.call("PATCH", f"/v1/patients/{pid}", json={"notes": "rectified"}, status=200)
    deleted = await api.photo(pid, seed=9)
    await api.json("DELETE", f"/v1/media/{deleted}")  # shredded media are not part of the export

    started = await api.json("POST", f"/v1/patients/{pid}/exports", status=202)
    assert started["status"] == "pending" and started["progress"] == 0
    export_id = started["id"]
    await drain(api.rt, BUILD_EXPORT)
    status = await api.json("GET", f"/v1/exports/{export_id}")
    # 3 originals, 3 thumbnails, 1 consent form, the two manifests
    assert status["status"] == "ready" and status["progress"] == 1.0 and status["items_done"] == status["items_total"] == 9

    async with api.rt.db.session() as s:
        at_rest = await api.rt.store.read((await s.get(Export, export_id)).blob_id)
    # Stored sealed: neither the ZIP structure nor any manifest text is visible at rest.
    assert b"PK\x03\x04" not in at_rest and b"manifest.csv" not in at_rest and b"media/" not in at_rest

    resp, body = await api.call("GET", f"/v1/exports/{export_id}/download", status=200)
    assert resp.headers["Content-Type"] == "application/zip"
    assert b"manifest.csv" in body and b"media/" in body  # what the at-rest check looked for is there
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    names = archive.namelist()
    consent_id = (await api.json("GET", f"/v1/patients/{pid}/consents"))
    consent_id = (consent_id["items"] if isinstance(consent_id, dict) else consent_id)[0]["id"]
    form = next(n for n in names if n.startswith("consents/"))
    assert sorted(names) == sorted([f"media/{m}.jpg" for m in media] + [f"thumbnails/{m}.jpg" for m in media]
                                   + [form, "manifest.csv", "manifest.json", "index.html"])
    assert form.startswith(f"consents/{consent_id}.")
    _, evidence = await api.call("GET", f"/v1/consents/{consent_id}/evidence", status=200)
    assert archive.read(form) == evidence  # the signed form, as recorded
    for m in media:
        _, thumb = await api.call("GET", f"/v1/media/{m}/thumbnail", role="records", status=200)
        assert archive.read(f"thumbnails/{m}.jpg") == thumb
    page = archive.read("index.html").decode()
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page and "//" not in page.replace("://", "")
    assert all(f'src="thumbnails/{m}.jpg"' in page for m in media) and f'href="{form}"' in page
    assert "teaching and training" in page and "Journal of Skin" in page
    for m in media:
        _, served = await api.call("GET", f"/v1/media/{m}/content", role="records", status=200)
        assert archive.read(f"media/{m}.jpg") == served

    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    assert sorted(r["media_id"] for r in rows) == sorted(media)
    for row in rows:
        assert row["sha256"] == hashlib.sha256(archive.read(row["file"])).hexdigest()
        assert int(row["size_bytes"]) == len(archive.read(row["file"]))

    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["patient"]["id"] == pid and manifest["patient"]["display_name"] == "Ada Example"
    assert manifest["patient"]["notes"] == "rectified"
    assert [t["id"] for t in manifest["treatments"]] == [treatment]
    assert sorted(m["id"] for m in manifest["media"]) == sorted(media)
    assert all(m["capture"] is not None or m["status"] != "ready" for m in manifest["media"])
    assert len(manifest["consents"]) == 1 and manifest["consents"][0]["notes"] == "signed in clinic"
    assert manifest["consents"][0]["evidence_file"] == form
    assert [r["recipient"] for r in manifest["releases"]] == ["Journal of Skin"]
    actions = {e["action"] for e in manifest["audit"]}
    assert {"patient.create", "media.upload", "consent.record", "release.create", "patient.rectify", "export.request"} <= actions

    # Once only: the second download is refused and the blob is shredded.
    resp, body = await api.call("GET", f"/v1/exports/{export_id}/download", status=410)
    assert json.loads(body)["details"]["status"] == "downloaded"
    assert (await api.json("GET", f"/v1/exports/{export_id}"))["status"] == "downloaded"
    async with api.rt.db.session() as s:
        row = await s.get(Export, export_id)
    assert row.blob_id is None


async def test_head_does_not_spend_the_download_and_pending_is_409(api: Api):
    pid = await api.patient()
    await api.photo(pid)
    export_id = await api.export(pid)
    await api.call("GET", f"/v1/exports/{export_id}/download", status=409)
    await drain(api.rt, BUILD_EXPORT)
    await api.call("HEAD", f"/v1/exports/{export_id}/download", status=200)
    await api.call("GET", f"/v1/exports/{export_id}/download", status=200)
    await api.call("GET", f"/v1/exports/{export_id}/download", status=410)


async def test_unread_exports_expire(api: Api):
    pid = await api.patient()
    await api.photo(pid)
    export_id = await api.export(pid)
    await drain(api.rt, BUILD_EXPORT)
    async with api.rt.db.transaction() as s:
        row = await s.get(Export, export_id)
        blob_id = row.blob_id
        await s.execute(update(Export).where(Export.id == export_id).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert await api.rt.store.exists(blob_id)
    assert await api.rt.lifecycle.exports.expire() >= 1
    assert not await api.rt.store.exists(blob_id)
    assert (await api.json("GET", f"/v1/exports/{export_id}"))["status"] == "expired"
    await api.call("GET", f"/v1/exports/{export_id}/download", status=410)


async def test_exports_of_another_tenant_are_404(api: Api, other_api: Api):
    pid = await other_api.patient()
    export_id = await other_api.export(pid)
    await api.call("GET", f"/v1/exports/{export_id}", status=404)
    await api.call("GET", f"/v1/exports/{export_id}/download", status=404)
    await api.call("POST", f"/v1/patients/{pid}/exports", status=404)
