"""A client generated from the served /v1/openapi.json by openapi-python-client (issue 19),
used as a records-system developer would against a running vault: create a patient,
upload a photo (multipart), list media, fetch a thumbnail, record consent. Every result
is a typed model, never None.

The generator is told to treat the photo media types as binary (``content_type_overrides``):
it models only application/octet-stream bodies as files."""

from __future__ import annotations

import importlib
import io
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from tests.consent.conftest import plain_jpeg
from vault.media.upload import CONTENT_TYPES

CONFIG = "package_name_override: vault_client\nproject_name_override: vault-client\ncontent_type_overrides:\n" + "".join(
    f"  {media}: application/octet-stream\n" for media in CONTENT_TYPES)


def _generate(spec: bytes, where: Path):
    (where / "openapi.json").write_bytes(spec)
    (where / "config.yaml").write_text(CONFIG)
    generator = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run([str(generator), "generate", "--path", str(where / "openapi.json"), "--meta", "none",
                           "--output-path", str(where / "vault_client"), "--config", str(where / "config.yaml")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Endpoint will not be generated" not in done.stdout, done.stdout
    sys.path.insert(0, str(where))
    try:
        importlib.invalidate_caches()
        return importlib.import_module("vault_client")
    finally:
        sys.path.remove(str(where))


def test_generated_client_round_trip(live, tmp_path):
    spec = httpx.get(f"{live.url}/v1/openapi.json", timeout=30).content
    vc = _generate(spec, tmp_path)
    with vc.AuthenticatedClient(base_url=live.url, token=live.tokens["practitioner"], timeout=httpx.Timeout(60)) as practitioner, \
            vc.AuthenticatedClient(base_url=live.url, token=live.tokens["dpo"], timeout=httpx.Timeout(60)) as dpo:
        _round_trip(practitioner, dpo)


def _round_trip(practitioner, dpo) -> None:
    from vault_client.api.consent import record_consent
    from vault_client.api.media import list_media, media_thumbnail, upload_media
    from vault_client.api.patients import create_patient
    from vault_client.models import (
        ConsentIn, ConsentInPurposesItem, ConsentView, MediaPage, MediaView, PatientCreate, PatientOut,
        UploadMediaFilesBody, UploadMediaPhase,
    )
    from vault_client.types import File

    patient = create_patient.sync(client=practitioner, body=PatientCreate(external_ref="GEN-" + secrets.token_hex(4)))
    assert isinstance(patient, PatientOut) and len(patient.id) == 32

    photo = File(payload=io.BytesIO(plain_jpeg(size=(320, 240))), file_name="IMG_0001.JPG", mime_type="image/jpeg")
    media = upload_media.sync(patient.id, client=practitioner, body=UploadMediaFilesBody(file=photo), phase=UploadMediaPhase.BEFORE)
    assert isinstance(media, MediaView), media
    assert (media.kind, media.status, media.phase, media.mime) == ("photo", "ready", "before", "image/jpeg")

    page = list_media.sync(patient.id, client=dpo)
    assert isinstance(page, MediaPage) and [m.id for m in page.items] == [media.id]

    thumbnail = media_thumbnail.sync(media.id, client=dpo)
    assert isinstance(thumbnail, File)
    assert thumbnail.payload.read(3) == b"\xff\xd8\xff"

    consent = record_consent.sync(patient.id, client=dpo, body=ConsentIn(
        purposes=[ConsentInPurposesItem.EDUCATION], identifiable=False))
    assert isinstance(consent, ConsentView)
    assert (consent.patient_id, [str(p) for p in consent.purposes], consent.identifiable) == (patient.id, ["education"], False)
