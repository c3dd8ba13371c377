"""DICOM export fixtures: a real Orthanc (tests/dicom/orthanc.py) per test, and the vault
pointed at it. ``dicom_overrides`` (parametrised indirectly) changes what the vault is
told about the PACS: a wrong password, another URL, no allow-listing."""

from __future__ import annotations

import os

import pytest

from tests.dicom.orthanc import Orthanc, missing_tools
from tests.lifecycle.support import Api


@pytest.fixture
def orthanc(tmp_path):
    why = missing_tools()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.folder.mkdir()
    pacs.start()
    yield pacs
    pacs.close()
    assert pacs.bridge is not None
    assert not [t.name for t in pacs.bridge.threads if t.is_alive()], "the bridge left threads running"


@pytest.fixture
def dicom_overrides(request) -> dict:
    return getattr(request, "param", {})


@pytest.fixture
def settings(settings, orthanc, dicom_overrides):
    values = {"dicomweb_url": orthanc.dicomweb_url, "dicomweb_username": "vault", "dicomweb_password": orthanc.password,
              "dicomweb_allow_http_loopback": True}
    for key, value in dicom_overrides.items():
        values[key] = value(orthanc) if callable(value) else value
    return settings.replace(**values)


@pytest.fixture
def api(client, clinic) -> Api:
    return Api(client, clinic)
