"""DICOM export round trips through a real Orthanc (DICOMweb STOW-RS): what Orthanc stores
is the photo — a baseline JPEG's bytes unchanged, every other source's decoded pixels
exactly — with the record's hospital number and name, in one study per treatment."""

from __future__ import annotations

import io
import secrets

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from tests.dicom.support import (
    audit_actions,
    dataset,
    decoded,
    request_export,
    run_export,
    stored_original,
    upload,
)
from tests.lifecycle.support import Api
from tests.pipeline.samples import (
    heic_with_everything,
    jpeg_with_everything,
    png_with_everything,
    picture,
    webp_with_everything,
)

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
JPEG_BASELINE, EXPLICIT_LITTLE = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"
NAME = "Zoë Åström-Ng"


def baseline_jpeg(seed: int = 3) -> bytes:
    out = io.BytesIO()
    picture(160, 120, seed=seed).save(out, "JPEG", quality=88)
    return out.getvalue()


async def patient_and_treatment(api: Api) -> tuple[str, str, str]:
    mrn = "H" + secrets.token_hex(5).upper()
    pid = (await api.json("POST", "/v1/patients", role="practitioner", status=201,
                          json={"external_ref": mrn, "display_name": NAME, "date_of_birth": "1984-07-09"}))["id"]
    return pid, mrn, await api.treatment(pid, performed_on="2026-03-01")


async def test_baseline_jpeg_is_encapsulated_unchanged(api: Api, orthanc):
    pid, mrn, treatment = await patient_and_treatment(api)
    before = await upload(api, pid, baseline_jpeg(), "image/jpeg", treatment_id=treatment, phase="before")
    after = await upload(api, pid, baseline_jpeg(seed=4), "image/jpeg", treatment_id=treatment, phase="after")

    started = await request_export(api, before["id"])
    status = await run_export(api, started["id"])
    assert status["status"] == "sent" and status["attempts"] == 1 and status["error"] is None
    assert status["transfer_syntax"] == JPEG_BASELINE and status["sop_instance_uid"].startswith("2.25.")

    ds = dataset(orthanc.instance_file(status["sop_instance_uid"]))
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE and ds.SOPClassUID == VL_PHOTOGRAPHIC
    assert ds.PatientID == mrn and str(ds.PatientName) == NAME and ds.PatientBirthDate == "19840709"
    assert ds.Modality == "XC" and ds.StudyDate == "20260301" and ds.StudyDescription == "Filler"
    assert ds.StudyInstanceUID == status["study_instance_uid"] and ds.SeriesInstanceUID == status["series_instance_uid"]
    original = await stored_original(api, before["id"])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert frame[:len(original)] == original and set(frame[len(original):]) <= {0}  # even-length padding only
    assert (ds.Rows, ds.Columns) == (before["height"], before["width"])
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.LossyImageCompression == "01"

    # One study per treatment (a series per phase); the same photo keeps its instance UID,
    # so sending it again replaces the instance in the PACS instead of adding one.
    second = await run_export(api, (await request_export(api, after["id"], role="dpo"))["id"])
    assert second["study_instance_uid"] == status["study_instance_uid"]
    assert second["series_instance_uid"] != status["series_instance_uid"]
    again = await run_export(api, (await request_export(api, before["id"]))["id"])
    assert again["sop_instance_uid"] == status["sop_instance_uid"] and again["id"] != status["id"]
    assert orthanc.instance_file(status["sop_instance_uid"]) is not None  # still exactly one (lookup asserts it)
    # No id of ours in any UID.
    for uid in (status["study_instance_uid"], status["series_instance_uid"], status["sop_instance_uid"]):
        assert all(part not in uid for part in (pid, treatment, before["id"]))

    actions = await audit_actions(api, before["id"])
    assert ("dicom_export.request", "ok") in actions and ("dicom_export.send", "ok") in actions
    assert ("dicom_export.read", "ok") in actions


CONVERTED = {
    "progressive_jpeg": (lambda: jpeg_with_everything(progressive=True, trailer=""), "image/jpeg", True),
    "cmyk_jpeg": (lambda: jpeg_with_everything(mode="CMYK", trailer=""), "image/jpeg", True),
    "turned_jpeg": (lambda: jpeg_with_everything(orientation=6, trailer=""), "image/jpeg", True),
    "png": (lambda: png_with_everything(), "image/png", False),
    "lossless_webp": (lambda: webp_with_everything(lossless=True), "image/webp", False),
    "heic": (lambda: heic_with_everything(orientation=6), "image/heic", True),
}


@pytest.mark.parametrize("source", sorted(CONVERTED))
async def test_other_sources_are_converted_losslessly(api: Api, orthanc, source):
    make, mime, lossy = CONVERTED[source]
    pid, mrn, _ = await patient_and_treatment(api)
    media = await upload(api, pid, make(), mime)
    status = await run_export(api, (await request_export(api, media["id"]))["id"])
    assert status["status"] == "sent" and status["transfer_syntax"] == EXPLICIT_LITTLE

    ds = dataset(orthanc.instance_file(status["sop_instance_uid"]))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE and ds.SOPClassUID == VL_PHOTOGRAPHIC
    assert ds.PatientID == mrn and str(ds.PatientName) == NAME
    assert ds.PhotometricInterpretation == "RGB" and ds.BitsAllocated == 8 and ds.SamplesPerPixel == 3
    assert ds.LossyImageCompression == ("01" if lossy else "00")
    expected = decoded(await stored_original(api, media["id"]))
    assert (ds.Columns, ds.Rows) == (media["width"], media["height"]) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(ds.pixel_array, expected)
    if source == "turned_jpeg":  # stored 320 x 240 with orientation 6: upright it is 240 x 320
        assert (ds.Columns, ds.Rows) == (240, 320)


async def test_no_treatment_groups_by_patient_and_grey_stays_grey(api: Api, orthanc):
    pid, mrn, _ = await patient_and_treatment(api)
    out = io.BytesIO()
    Image.fromarray(np.asarray(picture(96, 64).convert("L"))).save(out, "JPEG", quality=90)
    grey = await upload(api, pid, out.getvalue(), "image/jpeg")
    colour = await upload(api, pid, baseline_jpeg(), "image/jpeg", phase="after")
    first = await run_export(api, (await request_export(api, grey["id"]))["id"])
    second = await run_export(api, (await request_export(api, colour["id"]))["id"])
    assert first["study_instance_uid"] == second["study_instance_uid"]
    ds = dataset(orthanc.instance_file(first["sop_instance_uid"]))
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert np.array_equal(ds.pixel_array, np.asarray(Image.open(io.BytesIO(await stored_original(api, grey["id"])))))
