"""Fixtures for the media pipeline tests: exiftool as the oracle, and face detectors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

EXIFTOOL = "/usr/bin/exiftool"
# CI names the model with VAULT_TEST_FACE_MODEL; locally the shared copy beside the repo.
YUNET_MODEL = Path(os.environ.get("VAULT_TEST_FACE_MODEL")
                   or Path(__file__).resolve().parents[2].parent / "shared" / "models" / "face_detection_yunet.onnx")
# CI sets VAULT_TEST_REQUIRE_EXIFTOOL=1: there a missing oracle is a failure, not a skip.
REQUIRE_EXIFTOOL = os.environ.get("VAULT_TEST_REQUIRE_EXIFTOOL") == "1"


class Exiftool:
    """One long-running exiftool (``-stay_open``): starting Perl per call costs ~0.3 s.

    It reads files, so the synthetic samples go through a pytest temp folder (they are
    generated test data, never patient data).
    """

    def __init__(self, path: str, folder: Path) -> None:
        self._folder = folder
        self._process = subprocess.Popen([path, "-stay_open", "True", "-@", "-"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def _run(self, *args: str) -> bytes:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(("\n".join([*args, "-execute", ""])).encode())
        self._process.stdin.flush()
        out = b""
        while not out.endswith(b"{ready}\n"):
            line = self._process.stdout.readline()
            if not line:
                raise RuntimeError("exiftool exited")
            out += line
        return out[: -len(b"{ready}\n")]

    def _file(self, data: bytes) -> Path:
        path = self._folder / uuid.uuid4().hex
        path.write_bytes(data)
        return path

    def tags(self, data: bytes) -> dict[str, object]:
        """Every tag found, keyed 'Group:Name' (``-G1``), duplicates included (``-a``)."""
        path = self._file(data)
        try:
            found = json.loads(self._run("-j", "-a", "-G1", "-m", str(path)))[0]
        finally:
            path.unlink()
        # The System group describes the temp file, not the image.
        return {key: value for key, value in found.items()
                if key not in ("SourceFile", "ExifTool:ExifToolVersion") and not key.startswith("System:")}

    def strip(self, data: bytes) -> bytes:
        """exiftool's own lossless removal of all metadata (``-all=``): the oracle."""
        source, target = self._file(data), self._folder / uuid.uuid4().hex
        try:
            self._run("-all=", "-m", "-o", str(target), str(source))
            return target.read_bytes()
        finally:
            source.unlink()
            target.unlink(missing_ok=True)

    def close(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"-stay_open\nFalse\n")
        self._process.stdin.close()
        self._process.wait(timeout=30)
        self._process.stdout.close()


@pytest.fixture(scope="session")
def exiftool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exiftool]:
    path = EXIFTOOL if os.path.exists(EXIFTOOL) else shutil.which("exiftool")
    if path is None:
        reason = "exiftool is not installed (/usr/bin/exiftool): the metadata oracle is unavailable"
        if REQUIRE_EXIFTOOL:
            pytest.fail(reason)
        pytest.skip(reason)
    tool = Exiftool(path, tmp_path_factory.mktemp("exiftool"))
    yield tool
    tool.close()


@pytest.fixture(scope="session")
def yunet_model() -> str:
    if not YUNET_MODEL.is_file():
        reason = f"YuNet model not found at {YUNET_MODEL} (see shared/models/README.md)"
        if os.environ.get("VAULT_TEST_FACE_MODEL"):
            pytest.fail(reason)  # named explicitly (CI): missing is an error
        pytest.skip(reason)
    return str(YUNET_MODEL)
