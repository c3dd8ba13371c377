"""Shared helpers for the key-operations tests: the real CLI in-process, photos, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


_ENV = ("VAULT_DATA_DIR", "VAULT_DATABASE_URL", "VAULT_KEYSTORE_URL", "VAULT_STORAGE_URL", "VAULT_ROOT_KEY_URL")


async def run_cli(settings, *argv: str, monkeypatch) -> CliResult:
    """``vault <argv>`` through ``vault.cli.main`` (environment parsing, error mapping and
    exit code included) on the test's databases, in a thread: main() runs its own loop."""
    from vault.cli import main

    for name in [k for k in os.environ if k.startswith("VAULT_") and k != "VAULT_TEST_DATABASE_URL"]:
        monkeypatch.delenv(name)
    values = (settings.data_dir, settings.database_url, settings.keystore_url, settings.storage_url, settings.root_key_url)
    for name, value in zip(_ENV, values, strict=True):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("VAULT_LOG_LEVEL", "WARNING")
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(list(argv))

    code = await asyncio.to_thread(call)
    return CliResult(code, out.getvalue(), err.getvalue())


def jpeg(*, seed: int = 0) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def new_patient(client, clinic) -> str:
    resp = await client.post(
        "/v1/patients", json={"external_ref": "MRN-" + secrets.token_hex(6)}, headers=clinic.auth("practitioner")
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def upload_photo(client, clinic, patient_id: str, *, seed: int = 0) -> str:
    resp = await client.post(
        f"/v1/patients/{patient_id}/media", data=jpeg(seed=seed),
        headers={**clinic.auth("practitioner"), "Content-Type": "image/jpeg"},
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def fetch_all(client, clinic, media_id: str) -> dict[str, bytes | int]:
    """Original and both thumbnails, or the status when a fetch fails."""
    got: dict[str, bytes | int] = {}
    for name, path in (("original", "content"), ("thumb256", "thumbnail?size=256"), ("thumb1024", "thumbnail?size=1024")):
        resp = await client.get(f"/v1/media/{media_id}/{path}", headers=clinic.auth("records"))
        got[name] = await resp.read() if resp.status == 200 else resp.status
    return got


def keystore_engine(settings):
    """A direct engine on the key store (its own file, or its schema on PostgreSQL)."""
    from keys import db

    return db.create_engine(settings.keystore_url)
