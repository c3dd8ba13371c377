"""What the HTTP benchmarks share: an in-process vault on SQLite in a fresh temp folder
(migrated, no in-process jobs, the face model when there is one), one tenant ``bench`` with a token per role asked for, one
patient, and the helpers to upload photos and record consent through the API; plus the
median of an async action.

    async with seeded(("practitioner", "dpo"), patient_by="dpo") as s:
        media_id = await s.upload(jpeg())
        consent_id = await s.consent({"purposes": ["education"], "identifiable": True})
        t = await amedian(lambda: s.client.get(...), rounds)

Used by bench_media_list.py, bench_recalls.py, bench_consent.py, bench_gallery_filters.py and
bench_dicom.py.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
#: the face detector the benchmarks run with when it is there (as bench_http.py); without
#: one every photo counts as showing a face, and de-identified releases need a review
FACE_MODEL = ROOT.parent / "shared" / "models" / "face_detection_yunet.onnx"


async def amedian(action: Callable[[], Awaitable[object]], runs: int) -> float:
    """Median seconds of ``runs`` calls, after one warm-up call."""
    await action()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jpeg(size: tuple[int, int] = (320, 240), color: tuple[int, int, int] = (140, 110, 90)) -> bytes:
    """A small plain JPEG (no metadata, no face)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@dataclass
class Seeded:
    client: Any  # aiohttp.test_utils.TestClient
    runtime: Any  # vault.runtime.Runtime
    auth: dict[str, dict[str, str]]  # role -> its Authorization header
    patient_id: str

    async def upload(self, data: bytes, *, role: str = "practitioner") -> str:
        resp = await self.client.post(f"/v1/patients/{self.patient_id}/media", data=data,
                                      headers={**self.auth[role], "Content-Type": "image/jpeg"})
        assert resp.status == 201, await resp.text()
        return (await resp.json())["id"]

    async def drain(self, *kinds: str) -> None:
        """Run the queued jobs of these kinds with the real worker (as the tests do)."""
        from tests.support.jobs import drain

        await drain(self.runtime, *kinds, timeout=600)

    async def consent(self, body: dict[str, Any], *, role: str = "dpo") -> str:
        resp = await self.client.post(f"/v1/patients/{self.patient_id}/consents", json=body, headers=self.auth[role])
        assert resp.status == 201, await resp.text()
        return (await resp.json())["id"]


@asynccontextmanager
async def bench_app(roles: Iterable[str]) -> AsyncIterator[tuple[Any, Any, dict[str, dict[str, str]]]]:
    """(test client, runtime, {role: auth header}) of a fresh in-process vault, tenant ``bench``."""
    from aiohttp.test_utils import TestClient, TestServer

    from keys.migrate import upgrade as upgrade_keys
    from vault.app import create_app
    from vault.appkeys import RUNTIME
    from vault.config import Settings
    from vault.migrate import upgrade

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        settings = Settings(data_dir=data, database_url=f"sqlite+aiosqlite:///{data / 'vault.sqlite3'}",
                            keystore_url=f"sqlite+aiosqlite:///{data / 'keys.sqlite3'}", storage_url=(data / "blobs").as_uri(),
                            root_key_url=(data / "root.key").as_uri(), inprocess_jobs=False,
                            face_model=FACE_MODEL if FACE_MODEL.is_file() else None)
        await asyncio.to_thread(upgrade, settings.database_url)
        await upgrade_keys(settings.keystore_url)
        async with TestClient(TestServer(create_app(settings))) as client:
            runtime = client.server.app[RUNTIME]
            await runtime.tenants.create_tenant("bench", request_id="bench")
            auth = {}
            for role in roles:
                made = await runtime.tenants.create_token("bench", role, label=f"bench {role}", request_id="bench")
                auth[role] = {"Authorization": f"Bearer {made.token}"}
            yield client, runtime, auth


@asynccontextmanager
async def seeded(roles: Iterable[str], *, patient_by: str) -> AsyncIterator[Seeded]:
    """The vault, the tenant, a token per role and one patient (created by ``patient_by``)."""
    async with bench_app(roles) as (client, runtime, auth):
        resp = await client.post("/v1/patients", json={"external_ref": "BENCH-1"}, headers=auth[patient_by])
        assert resp.status == 201, await resp.text()
        yield Seeded(client=client, runtime=runtime, auth=auth, patient_id=(await resp.json())["id"])
